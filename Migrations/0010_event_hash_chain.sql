-- Tamper evidence: every event carries a SHA-256 hash chained to the previous event of its stream.
--
--   hash(e) = SHA-256( previous
--                      || int8 global_position || int8 stream_version || uuid event_id
--                      || int8 recorded_at (microseconds since 1970-01-01 UTC)
--                      || int4 length || event_type || int4 length || data || int4 length || metadata )
--
-- with integers big-endian (PostgreSQL's send format), texts UTF-8, and data and metadata as PostgreSQL
-- writes a jsonb value out (its canonical text: keys sorted, no insignificant white space). The first
-- event's previous is SHA-256("convo.events.v1" || int4 length || tenant || int4 length || stream), which
-- binds a chain to its stream. Anyone who edits, deletes, inserts or reorders rows behind the store's back
-- (it takes disabling the immutability triggers) breaks a chain; `convo audit verify` recomputes every
-- hash outside the database, so a changed function here cannot vouch for itself.
--
-- The hash is computed by the appending functions, in the append's transaction, from the previous
-- version's hash read together with the stream's version: not by a row trigger, whose view of the
-- earlier rows of one multi-row INSERT would depend on the order the rows are processed in. Two appends
-- that read the same head collide on events_stream_version_key exactly as before, so a chain never forks.

CREATE FUNCTION convo_hash_field(p bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT int4send(length(p)) || p $$;

CREATE FUNCTION convo_chain_genesis(p_tenant text, p_stream text) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT sha256(convert_to('convo.events.v1', 'UTF8') || convo_hash_field(convert_to(p_tenant, 'UTF8'))
                  || convo_hash_field(convert_to(p_stream, 'UTF8')))
$$;

-- STABLE, not IMMUTABLE: extract() on a timestamptz is stable (the epoch does not depend on the time zone,
-- but PostgreSQL marks the function as a whole).
CREATE FUNCTION convo_event_hash(
    p_previous bytea, p_position bigint, p_version bigint, p_id uuid, p_recorded_at timestamptz,
    p_type text, p_data jsonb, p_metadata jsonb
) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT sha256(p_previous || int8send(p_position) || int8send(p_version) || uuid_send(p_id)
                  || int8send((extract(epoch FROM p_recorded_at) * 1000000)::bigint)
                  || convo_hash_field(convert_to(p_type, 'UTF8'))
                  || convo_hash_field(convert_to(p_data::text, 'UTF8'))
                  || convo_hash_field(convert_to(p_metadata::text, 'UTF8')))
$$;

ALTER TABLE events ADD COLUMN hash bytea;

-- Existing rows, stream by stream in version order. The immutability trigger is switched off for this
-- transaction only (ALTER TABLE holds an exclusive lock on events until commit, so no append runs
-- meanwhile) and switched on again below, before the commit.
ALTER TABLE events DISABLE TRIGGER events_refuse_update_delete;
DO $$
DECLARE
    r          record;
    v_previous bytea;
    v_key      text := NULL;
BEGIN
    FOR r IN SELECT global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, recorded_at
             FROM events ORDER BY tenant_id, stream_name, stream_version LOOP
        IF v_key IS DISTINCT FROM r.tenant_id || '/' || r.stream_name THEN
            v_key := r.tenant_id || '/' || r.stream_name;
            v_previous := convo_chain_genesis(r.tenant_id, r.stream_name);
        END IF;
        v_previous := convo_event_hash(v_previous, r.global_position, r.stream_version, r.event_id, r.recorded_at,
                                       r.event_type, r.data, r.metadata);
        UPDATE events SET hash = v_previous WHERE global_position = r.global_position;
    END LOOP;
END
$$;
ALTER TABLE events ENABLE TRIGGER events_refuse_update_delete;

ALTER TABLE events ALTER COLUMN hash SET NOT NULL;
ALTER TABLE events ADD CONSTRAINT events_hash_length CHECK (octet_length(hash) = 32);


-- convo_append (0004) with the hash: the head's version and hash are read in one index probe, and each
-- event's hash chains to the one before it.
CREATE OR REPLACE FUNCTION convo_append(
    p_tenant   text,
    p_stream   text,
    p_expected bigint,
    p_ids      uuid[],
    p_types    text[],
    p_data     jsonb[],
    p_metadata jsonb[]
) RETURNS TABLE (event_id uuid, stream_version bigint, global_position bigint, recorded_at timestamptz, duplicate boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_count     int := coalesce(cardinality(p_ids), 0);
    v_current   bigint;
    v_previous  bytea;
    v_positions bigint[] := '{}';
    v_hashes    bytea[] := '{}';
    v_now       timestamptz := now();
    v_inserted  bigint;
    v_base      bigint;
    v_ignored   text;
BEGIN
    IF v_count = 0 OR cardinality(p_types) <> v_count OR cardinality(p_data) <> v_count
       OR cardinality(p_metadata) <> v_count THEN
        RAISE EXCEPTION 'convo_append needs as many ids, types, data and metadata as events, at least one'
            USING ERRCODE = 'CV004';
    END IF;
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        -- Positions come from this transaction's id: one append per transaction, its first write.
        RAISE EXCEPTION 'convo_append must be the first write of its transaction' USING ERRCODE = 'CV004';
    END IF;
    IF v_count > 65535 THEN
        RAISE EXCEPTION 'convo_append takes at most 65,535 events' USING ERRCODE = 'CV004';
    END IF;

    -- An append that computes its version from the stream (any, stream exists) takes the stream's lock so
    -- that such appends queue instead of colliding. One with an exact expectation needs no lock: a racer
    -- that read the same version collides on events_stream_version_key at insert and fails, which the
    -- store reports as a wrong expected version. An advisory lock assigns no transaction id.
    IF p_expected < 0 THEN
        v_ignored := pg_advisory_xact_lock(1668183670, hashtext(p_tenant || '/' || p_stream))::text;
    END IF;

    SELECT e.stream_version, e.hash INTO v_current, v_previous
    FROM events e WHERE e.tenant_id = p_tenant AND e.stream_name = p_stream
    ORDER BY e.stream_version DESC LIMIT 1;
    IF v_current IS NULL THEN
        v_current := 0;
        v_previous := convo_chain_genesis(p_tenant, p_stream);
    END IF;
    IF (p_expected = -2 AND v_current = 0) OR (p_expected >= 0 AND p_expected <> v_current) THEN
        IF convo_append_is_stored(p_tenant, p_stream, p_ids) THEN
            RETURN QUERY
                SELECT e.event_id, e.stream_version, e.global_position, e.recorded_at, true
                FROM events e WHERE e.event_id = ANY (p_ids) ORDER BY e.stream_version;
            RETURN;
        END IF;
        RAISE EXCEPTION 'wrong expected version' USING ERRCODE = 'CV001', DETAIL = v_current::text;
    END IF;

    -- Positions follow transaction ids with no lock: this transaction's id (assigned here), shifted left
    -- 16 bits, plus the event's place in the append. Readers rely on positions growing with transaction ids.
    v_base := pg_current_xact_id()::text::bigint << 16;
    FOR i IN 1 .. v_count LOOP
        v_positions[i] := v_base + i;
        v_previous := convo_event_hash(v_previous, v_base + i, v_current + i, p_ids[i], v_now, p_types[i], p_data[i], p_metadata[i]);
        v_hashes[i] := v_previous;
    END LOOP;

    RETURN QUERY
        INSERT INTO events AS e (global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, recorded_at, hash)
        SELECT v_positions[i.n], i.id, p_tenant, p_stream, v_current + i.n, i.type, i.data, i.metadata, v_now, v_hashes[i.n]
        FROM unnest(p_ids, p_types, p_data, p_metadata) WITH ORDINALITY AS i (id, type, data, metadata, n)
        ON CONFLICT ON CONSTRAINT events_event_id_key DO NOTHING
        RETURNING e.event_id, e.stream_version, e.global_position, e.recorded_at, false;
    GET DIAGNOSTICS v_inserted = ROW_COUNT;
    IF v_inserted < v_count THEN
        -- Some ids are stored already. Only a retry of a whole append (all ids, in this stream, in order)
        -- is answered with the stored rows, and only when this call inserted none.
        IF v_inserted = 0 AND convo_append_is_stored(p_tenant, p_stream, p_ids) THEN
            RETURN QUERY
                SELECT e.event_id, e.stream_version, e.global_position, e.recorded_at, true
                FROM events e WHERE e.event_id = ANY (p_ids) ORDER BY e.stream_version;
            RETURN;
        END IF;
        RAISE EXCEPTION 'an event id of this append is already stored at another place'
            USING ERRCODE = 'CV002',
                  DETAIL = (SELECT e.event_id::text FROM events e
                            WHERE e.event_id = ANY (p_ids) AND (e.tenant_id <> p_tenant OR e.stream_name <> p_stream
                                                                OR e.global_position <> ALL (v_positions))
                            LIMIT 1);
    END IF;
END
$$;


-- convo_append_many (0009) with the hash: every stream's head hash is read with its version, and each
-- accepted event's hash chains to the one before it in its stream, counting earlier appends of the call.
CREATE OR REPLACE FUNCTION convo_append_many(
    p_tenants  text[],
    p_streams  text[],
    p_expected bigint[],
    p_counts   int[],
    p_ids      uuid[],
    p_types    text[],
    p_data     jsonb[],
    p_metadata jsonb[]
) RETURNS TABLE (item int, event_id uuid, stream_version bigint, global_position bigint, recorded_at timestamptz,
                 duplicate boolean, error text, actual bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_items    int := coalesce(cardinality(p_streams), 0);
    v_total    int := coalesce(cardinality(p_ids), 0);
    v_item_of  int[] := '{}';
    v_first    int[] := '{}';
    v_taken    int[];
    v_versions jsonb;
    v_hashes   jsonb;
    v_previous bytea;
    v_now      timestamptz := now();
    v_key      text;
    v_current  bigint;
    v_base     bigint;
    v_written  int := 0;
    v_n        int := 0;
    v_idx      int;
    -- What the INSERT writes.
    w_item     int[] := '{}';
    w_index    int[] := '{}';
    w_version  bigint[] := '{}';
    w_position bigint[] := '{}';
    w_hash     bytea[] := '{}';
    v_ignored  text;
    v_i        int;
    v_planned  jsonb := '{}';
BEGIN
    IF v_items = 0 OR cardinality(p_tenants) <> v_items OR cardinality(p_expected) <> v_items
       OR cardinality(p_counts) <> v_items OR cardinality(p_types) <> v_total OR cardinality(p_data) <> v_total
       OR cardinality(p_metadata) <> v_total
       OR (SELECT sum(c) FROM unnest(p_counts) AS c) <> v_total OR (SELECT min(c) FROM unnest(p_counts) AS c) < 1 THEN
        RAISE EXCEPTION 'convo_append_many needs one tenant, stream, expectation and count per append, and as many ids, types, data and metadata as events'
            USING ERRCODE = 'CV004';
    END IF;
    IF v_total > 65535 THEN
        RAISE EXCEPTION 'convo_append_many takes at most 65,535 events' USING ERRCODE = 'CV004';
    END IF;
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'convo_append_many must be the first write of its transaction' USING ERRCODE = 'CV004';
    END IF;

    FOR i IN 1 .. v_items LOOP
        v_first[i] := v_n + 1;
        FOR k IN 1 .. p_counts[i] LOOP
            v_item_of[v_n + k] := i;
        END LOOP;
        v_n := v_n + p_counts[i];
    END LOOP;

    SELECT string_agg(pg_advisory_xact_lock(1668183670, hashtext(k))::text, '') INTO v_ignored
    FROM (SELECT DISTINCT t || '/' || s AS k FROM unnest(p_tenants, p_streams) AS u (t, s) ORDER BY 1) AS keys;

    SELECT coalesce(array_agg(DISTINCT v_item_of[u.n]), '{}') INTO v_taken
    FROM unnest(p_ids) WITH ORDINALITY AS u (id, n)
    WHERE EXISTS (SELECT 1 FROM events e WHERE e.event_id = u.id);

    SELECT jsonb_object_agg(k.t || '/' || k.s, coalesce(h.stream_version, 0)),
           jsonb_object_agg(k.t || '/' || k.s, encode(coalesce(h.hash, convo_chain_genesis(k.t, k.s)), 'hex'))
    INTO v_versions, v_hashes
    FROM (SELECT DISTINCT t, s FROM unnest(p_tenants, p_streams) AS u (t, s)) AS k
    LEFT JOIN LATERAL (SELECT e.stream_version, e.hash FROM events e
                       WHERE e.tenant_id = k.t AND e.stream_name = k.s
                       ORDER BY e.stream_version DESC LIMIT 1) AS h ON true;

    FOR i IN 1 .. v_items LOOP
        CONTINUE WHEN i = ANY (v_taken);
        -- An id an earlier append of this call writes (a retry racing its original): settled after the insert.
        IF EXISTS (SELECT 1 FROM unnest(p_ids[v_first[i] : v_first[i] + p_counts[i] - 1]) AS u (id) WHERE v_planned ? u.id::text) THEN
            v_taken := v_taken || i;
            CONTINUE;
        END IF;
        SELECT v_planned || jsonb_object_agg(u.id::text, true) INTO v_planned
        FROM unnest(p_ids[v_first[i] : v_first[i] + p_counts[i] - 1]) AS u (id);
        v_key := p_tenants[i] || '/' || p_streams[i];
        v_current := (v_versions ->> v_key)::bigint;
        IF (p_expected[i] = -2 AND v_current = 0) OR (p_expected[i] >= 0 AND p_expected[i] <> v_current) THEN
            item := i; event_id := NULL; stream_version := NULL; global_position := NULL; recorded_at := NULL;
            duplicate := false; error := 'wrong_expected_version'; actual := v_current;
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF v_base IS NULL THEN
            v_base := pg_current_xact_id()::text::bigint << 16;
        END IF;
        v_previous := decode(v_hashes ->> v_key, 'hex');
        FOR k IN 1 .. p_counts[i] LOOP
            v_idx := v_first[i] + k - 1;
            v_previous := convo_event_hash(v_previous, v_base + v_written + k, v_current + k, p_ids[v_idx], v_now,
                                           p_types[v_idx], p_data[v_idx], p_metadata[v_idx]);
            w_item := w_item || i;
            w_index := w_index || v_idx;
            w_version := w_version || (v_current + k);
            w_position := w_position || (v_base + v_written + k);
            w_hash := array_append(w_hash, v_previous);
        END LOOP;
        v_written := v_written + p_counts[i];
        v_versions := jsonb_set(v_versions, ARRAY[v_key], to_jsonb(v_current + p_counts[i]));
        v_hashes := jsonb_set(v_hashes, ARRAY[v_key], to_jsonb(encode(v_previous, 'hex')));
    END LOOP;

    IF v_written > 0 THEN
        RETURN QUERY
            WITH planned AS (
                SELECT w.item, w.idx, w.version, w.position, w.hash
                FROM unnest(w_item, w_index, w_version, w_position, w_hash) AS w (item, idx, version, position, hash)
            ), inserted AS (
                INSERT INTO events AS e (global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata, recorded_at, hash)
                SELECT p.position, p_ids[p.idx], p_tenants[p.item], p_streams[p.item], p.version, p_types[p.idx], p_data[p.idx], p_metadata[p.idx],
                       v_now, p.hash
                FROM planned p
                RETURNING e.global_position, e.event_id, e.stream_version, e.recorded_at
            )
            SELECT p.item, i.event_id, i.stream_version, i.global_position, i.recorded_at, false, NULL::text, NULL::bigint
            FROM inserted i JOIN planned p ON p.position = i.global_position
            ORDER BY p.item, i.stream_version;
    END IF;

    -- The appends that carry a stored id: a retry of a whole stored append is answered with its rows.
    FOR v_i IN SELECT unnest(v_taken) ORDER BY 1 LOOP
        IF convo_append_is_stored(p_tenants[v_i], p_streams[v_i], p_ids[v_first[v_i] : v_first[v_i] + p_counts[v_i] - 1])
           AND (SELECT count(*) FROM events e WHERE e.event_id = ANY (p_ids[v_first[v_i] : v_first[v_i] + p_counts[v_i] - 1])) = p_counts[v_i] THEN
            RETURN QUERY
                SELECT v_i, e.event_id, e.stream_version, e.global_position, e.recorded_at, true, NULL::text, NULL::bigint
                FROM events e WHERE e.event_id = ANY (p_ids[v_first[v_i] : v_first[v_i] + p_counts[v_i] - 1]) ORDER BY e.stream_version;
        ELSE
            RETURN QUERY SELECT v_i, NULL::uuid, NULL::bigint, NULL::bigint, NULL::timestamptz, false, 'duplicate_id'::text, NULL::bigint;
        END IF;
    END LOOP;
END
$$;
