"""Who may spend what: transport security, authentication, authorization and rate limits.

Each concern is a module of pure decisions with a thin adapter: ``tls`` (server credentials from
files), ``mode`` (is authentication on), ``apikeys`` and ``tokenreview`` (who is calling),
``roles`` (what a service account may do), ``policy`` (may this principal make this call on these
budgets), ``ratelimit`` (per-principal token buckets), ``gate`` (the three in order, for one call)
and ``layer`` (the gate in front of every RPC of the BudgetAuthority service).
"""
