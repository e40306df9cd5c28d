"""The AgentBudget budget authority server."""
