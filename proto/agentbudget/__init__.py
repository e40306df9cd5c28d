"""AgentBudget API: generated gRPC code (agentbudget.v1) and a thin typed client."""
