-- Who may spend from a budget as its agent, and who caused each ledger row and event.
ALTER TABLE budgets ADD COLUMN agent_principals text[] NOT NULL DEFAULT '{}';
ALTER TABLE ledger_entries ADD COLUMN principal text;
ALTER TABLE events ADD COLUMN principal text;
