-- Authorization (auth/agents.py): who may spend from a budget as its agent.

-- name: auth_agent_principals
-- Deleted budgets too: their ledger stays readable to those who could read it.
SELECT agent_principals FROM budgets WHERE name = $1;
