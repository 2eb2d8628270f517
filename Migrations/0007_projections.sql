-- The catalogue of stored projections. A projection's rows live in a table named after it (created by
-- convo from the projection's definition, because a new projection version may change its columns); this
-- table says which version those rows were folded by and how far into the events they reach.
--
-- checkpoint is written in the same transaction as the rows, so rows and checkpoint never disagree.
-- A rebuild builds a table of its own and swaps it in by renaming, updating the row here in the same
-- transaction; a runner that finds the checkpoint changed under it starts again from the new one.

CREATE TABLE projections (
    name            text        PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,40}$'),
    version         int         NOT NULL CHECK (version > 0),
    checkpoint      bigint      NOT NULL DEFAULT 0 CHECK (checkpoint >= 0),
    -- Set when the fold could not apply the event at failed_position; cleared by a rebuild.
    failed_position bigint,
    failed_event    text,
    error           text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per rebuild, kept as history: who rebuilt what, how many events, how long, how it ended.
CREATE TABLE projection_rebuilds (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL,
    version     int         NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    -- running, swapped, failed, or interrupted (found unfinished with no rebuild holding the lock).
    outcome     text        NOT NULL DEFAULT 'running',
    events      bigint      NOT NULL DEFAULT 0,
    checkpoint  bigint      NOT NULL DEFAULT 0,
    error       text,
    reason      text        NOT NULL
);

CREATE INDEX projection_rebuilds_name_idx ON projection_rebuilds (name, id DESC);
