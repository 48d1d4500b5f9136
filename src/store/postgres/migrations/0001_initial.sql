-- hookrelay's PostgreSQL schema, version 1. Runs inside the schema named by
-- store.postgres.schema (the search path is set to it).
--
-- Ids are ULIDs as 16 big-endian bytes (bytea), so byte order is time
-- order and a delivery's id follows its event's. States are small
-- integers: 0 pending, 1 in flight, 2 succeeded, 3 dead, 4 cancelled.
-- Indexes exist only for what the queries use; each one names its query.

CREATE TABLE events (
    id             bytea  PRIMARY KEY,
    received_at_ms bigint NOT NULL,
    meta           jsonb  NOT NULL,
    body           bytea  NOT NULL
);

CREATE TABLE deliveries (
    id             bytea    PRIMARY KEY,
    event          bytea    NOT NULL,
    target         text     NOT NULL,
    state          smallint NOT NULL,
    attempts       integer  NOT NULL DEFAULT 0,
    base           integer  NOT NULL DEFAULT 0,
    next_at_ms     bigint   NOT NULL,
    last           jsonb,
    note           text,
    -- A claim: the relay that holds it, the token its outcome must bring
    -- back, and when the claim lapses unless renewed.
    owner          bigint,
    claim_token    bigint,
    lease_until_ms bigint
);
-- Claims and the scheduler: a target's pending deliveries by due time.
CREATE INDEX deliveries_due ON deliveries (target, next_at_ms) WHERE state = 0;
-- Lapsed leases (a dead relay's claims taken back).
CREATE INDEX deliveries_leases ON deliveries (lease_until_ms) WHERE state = 1;
-- An event's deliveries (the API, retention).
CREATE INDEX deliveries_event ON deliveries (event);
-- Bulk re-queue by state (the delivery log pages by id, the key).
CREATE INDEX deliveries_state ON deliveries (state, id);
-- A target's deliveries in flight across the fleet (its concurrency).
CREATE INDEX deliveries_in_flight ON deliveries (target) WHERE state = 1;

CREATE TABLE attempts (
    delivery bytea   NOT NULL,
    n        integer NOT NULL,
    record   jsonb   NOT NULL,
    PRIMARY KEY (delivery, n)
);

CREATE TABLE dedup (
    route         text   NOT NULL,
    key           text   NOT NULL,
    event         bytea  NOT NULL,
    expires_at_ms bigint NOT NULL,
    PRIMARY KEY (route, key)
);
-- Expired keys, removed in batches.
CREATE INDEX dedup_expiry ON dedup (expires_at_ms);

CREATE TABLE endpoints (
    id     text  PRIMARY KEY,
    record jsonb NOT NULL
);

-- A target's counters, added to by every relay of the fleet.
CREATE TABLE counters (
    target      text    PRIMARY KEY,
    calls       bigint  NOT NULL DEFAULT 0,
    succeeded   bigint  NOT NULL DEFAULT 0,
    failed      bigint  NOT NULL DEFAULT 0,
    dead        bigint  NOT NULL DEFAULT 0,
    tests       bigint  NOT NULL DEFAULT 0,
    duration_ms bigint  NOT NULL DEFAULT 0,
    last_status integer,
    last_error  text,
    last_at_ms  bigint
);

-- A target's rate for the fleet: a token bucket relays reserve from.
CREATE TABLE buckets (
    target        text             PRIMARY KEY,
    tokens        double precision NOT NULL,
    updated_at_ms bigint           NOT NULL
);

-- Targets whose circuit a relay opened, for the whole fleet.
CREATE TABLE circuits (
    target        text   PRIMARY KEY,
    open_until_ms bigint NOT NULL
);

-- Bumped with every change of its kind (`endpoints`), so a relay can
-- tell with one read whether to read the endpoints again.
CREATE TABLE generations (
    name  text   PRIMARY KEY,
    value bigint NOT NULL
);

CREATE TABLE inbound (
    id     bytea PRIMARY KEY,
    record jsonb NOT NULL
);

CREATE TABLE stats (
    series      text     NOT NULL,
    resolution  smallint NOT NULL,
    start_ms    bigint   NOT NULL,
    events      bigint   NOT NULL DEFAULT 0,
    duplicates  bigint   NOT NULL DEFAULT 0,
    rejected    bigint   NOT NULL DEFAULT 0,
    succeeded   bigint   NOT NULL DEFAULT 0,
    failed      bigint   NOT NULL DEFAULT 0,
    dead        bigint   NOT NULL DEFAULT 0,
    attempts    bigint   NOT NULL DEFAULT 0,
    duration_ms bigint   NOT NULL DEFAULT 0,
    gauges      jsonb,
    PRIMARY KEY (series, resolution, start_ms)
);
-- Removing old rows of one resolution.
CREATE INDEX stats_age ON stats (resolution, start_ms);

-- The hot tables change all the time: vacuum them sooner than the
-- defaults (20 % of the table) would, so dead rows do not pile up.
ALTER TABLE deliveries SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE events SET (autovacuum_vacuum_scale_factor = 0.05);
ALTER TABLE attempts SET (autovacuum_vacuum_scale_factor = 0.05);
ALTER TABLE inbound SET (autovacuum_vacuum_scale_factor = 0.05);
