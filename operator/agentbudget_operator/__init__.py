"""The AgentBudget operator: AgentBudget resources drive the budget authority and the agents' workloads."""
