-- convo_append_many: several appends, to any streams, in one transaction and one round trip (group commit).
--
-- Each append keeps its own contract: its expected version (-1 any, -2 stream exists, 0 no stream, n
-- exact), its idempotency (a retry of a stored append answers with the stored rows, duplicate = true) and
-- its own error, returned as a row (error = 'wrong_expected_version' with the actual version, or
-- 'duplicate_id') instead of raised, so one refused append does not undo the others. Appends to the same
-- stream apply in the order given and see each other.
--
-- Every stream of the call is locked (advisory, transaction-scoped, in one order) before anything is
-- read, so concurrent batches and single appends to a shared stream queue instead of colliding. An
-- exact-version single append takes no lock; if one wins a version this call read, the insert fails on
-- events_stream_version_key and the caller retries the whole call (nothing of it was written).
--
-- Positions follow the transaction id as in convo_append: (xid << 16) + the event's place in the call, so
-- a call carries at most 65,535 events and must be its transaction's first write.

CREATE FUNCTION convo_append_many(
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
    v_items   int := coalesce(cardinality(p_streams), 0);
    v_total   int := coalesce(cardinality(p_ids), 0);
    v_offset  int := 0;
    v_written int := 0;
    v_base    bigint;
    v_current bigint;
    v_ids     uuid[];
    v_n       int;
    v_stored  int;
    v_ignored text;
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

    SELECT string_agg(pg_advisory_xact_lock(1668183670, hashtext(k))::text, '') INTO v_ignored
    FROM (SELECT DISTINCT t || '/' || s AS k FROM unnest(p_tenants, p_streams) AS u (t, s) ORDER BY 1) AS keys;

    FOR i IN 1 .. v_items LOOP
        v_n := p_counts[i];
        v_ids := p_ids[v_offset + 1 : v_offset + v_n];

        SELECT count(*) INTO v_stored FROM events e WHERE e.event_id = ANY (v_ids);
        IF v_stored > 0 THEN
            IF v_stored = v_n AND convo_append_is_stored(p_tenants[i], p_streams[i], v_ids) THEN
                RETURN QUERY
                    SELECT i, e.event_id, e.stream_version, e.global_position, e.recorded_at, true, NULL::text, NULL::bigint
                    FROM events e WHERE e.event_id = ANY (v_ids) ORDER BY e.stream_version;
            ELSE
                RETURN QUERY SELECT i, NULL::uuid, NULL::bigint, NULL::bigint, NULL::timestamptz, false, 'duplicate_id'::text, NULL::bigint;
            END IF;
            v_offset := v_offset + v_n;
            CONTINUE;
        END IF;

        SELECT coalesce(max(e.stream_version), 0) INTO v_current
        FROM events e WHERE e.tenant_id = p_tenants[i] AND e.stream_name = p_streams[i];
        IF (p_expected[i] = -2 AND v_current = 0) OR (p_expected[i] >= 0 AND p_expected[i] <> v_current) THEN
            RETURN QUERY SELECT i, NULL::uuid, NULL::bigint, NULL::bigint, NULL::timestamptz, false, 'wrong_expected_version'::text, v_current;
            v_offset := v_offset + v_n;
            CONTINUE;
        END IF;

        IF v_base IS NULL THEN
            v_base := pg_current_xact_id()::text::bigint << 16;
        END IF;
        RETURN QUERY
            INSERT INTO events AS e (global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata)
            SELECT v_base + v_written + k.n, k.id, p_tenants[i], p_streams[i], v_current + k.n, k.type, k.data, k.metadata
            FROM unnest(v_ids, p_types[v_offset + 1 : v_offset + v_n], p_data[v_offset + 1 : v_offset + v_n],
                        p_metadata[v_offset + 1 : v_offset + v_n]) WITH ORDINALITY AS k (id, type, data, metadata, n)
            RETURNING i, e.event_id, e.stream_version, e.global_position, e.recorded_at, false, NULL::text, NULL::bigint;
        v_written := v_written + v_n;
        v_offset := v_offset + v_n;
    END LOOP;
END
$$;
