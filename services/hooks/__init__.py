"""Agent SDK hooks (optional extras): `services.hooks.openai_agents` (openai-agents),
`services.hooks.langchain` (langchain / langchain-core), `services.hooks.langgraph_store`
(langgraph). Import the submodule of the SDK you use; each needs only its own SDK."""
