-- convo_append_many: several appends, to any streams, in one transaction and one round trip (group commit).
--
-- Each append keeps its own contract: its expected version (-1 any, -2 stream exists, 0 no stream, n
-- exact), its idempotency (a retry of a stored append answers with the stored rows, duplicate = true) and
-- its own error, returned as a row (error = 'wrong_expected_version' with the actual version, or
-- 'duplicate_id') instead of raised, so one refused append does not undo the others. Appends to the same
-- stream apply in the order given and see each other.
--
-- Set-based: however many appends, one statement locks the streams (advisory, transaction-scoped, in one
-- order, so concurrent calls and single appends to a shared stream queue instead of colliding), one finds
-- the appends that carry an id already stored or written earlier in the call (retries: answered one by one
-- after the insert; they never insert), one reads every stream's version, and one INSERT writes every
-- accepted event. Expectations are checked in the order given, against versions that count the earlier
-- appends of the same call. An exact-version single append takes no lock; if one wins a version this call
-- read, the insert fails on events_stream_version_key and the caller retries the whole call (nothing of it
-- was written).
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
    v_items    int := coalesce(cardinality(p_streams), 0);
    v_total    int := coalesce(cardinality(p_ids), 0);
    v_item_of  int[] := '{}';
    v_first    int[] := '{}';
    v_taken    int[];
    v_versions jsonb;
    v_key      text;
    v_current  bigint;
    v_base     bigint;
    v_written  int := 0;
    v_n        int := 0;
    -- What the INSERT writes.
    w_item     int[] := '{}';
    w_index    int[] := '{}';
    w_version  bigint[] := '{}';
    w_position bigint[] := '{}';
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

    SELECT jsonb_object_agg(k.t || '/' || k.s, coalesce((SELECT max(e.stream_version) FROM events e
                                                       WHERE e.tenant_id = k.t AND e.stream_name = k.s), 0))
    INTO v_versions
    FROM (SELECT DISTINCT t, s FROM unnest(p_tenants, p_streams) AS u (t, s)) AS k;

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
        FOR k IN 1 .. p_counts[i] LOOP
            w_item := w_item || i;
            w_index := w_index || (v_first[i] + k - 1);
            w_version := w_version || (v_current + k);
            w_position := w_position || (v_base + v_written + k);
        END LOOP;
        v_written := v_written + p_counts[i];
        v_versions := jsonb_set(v_versions, ARRAY[v_key], to_jsonb(v_current + p_counts[i]));
    END LOOP;

    IF v_written > 0 THEN
        RETURN QUERY
            WITH planned AS (
                SELECT w.item, w.idx, w.version, w.position FROM unnest(w_item, w_index, w_version, w_position) AS w (item, idx, version, position)
            ), inserted AS (
                INSERT INTO events AS e (global_position, event_id, tenant_id, stream_name, stream_version, event_type, data, metadata)
                SELECT p.position, p_ids[p.idx], p_tenants[p.item], p_streams[p.item], p.version, p_types[p.idx], p_data[p.idx], p_metadata[p.idx]
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
