-- Prices and routing: each budget's routing overrides; what priced usage consists of; free holds.

ALTER TABLE budgets ADD COLUMN routing jsonb NOT NULL DEFAULT '{}';

ALTER TABLE ledger_entries
    ADD COLUMN reasoning_tokens bigint,
    ADD COLUMN sandbox_class    text,
    ADD COLUMN provider         text;

-- A hold priced at zero (a free API, say) is still a hold that ends exactly once.
ALTER TABLE reservations DROP CONSTRAINT reservations_amount_nanos_check;
ALTER TABLE reservations ADD CONSTRAINT reservations_amount_nanos_check CHECK (amount_nanos >= 0);
