-- Indexes for the audit-trail queries (`GET /v1/audit/events`, `/v1/audit/conflicts`, `convo audit …`).
--
-- Every search is one tenant's, in position order (keyset pagination), so each index leads with the tenant,
-- ends with the position, and holds the searched value in between: an index scan hands out the next page
-- in order, without sorting, however many events match. A conversation's history reads its two streams
-- through events_stream_version_key.

-- By event type (ProcessingConflictDetected for the conflicts query).
CREATE INDEX events_tenant_type_position_idx ON events (tenant_id, event_type, global_position);

-- By actor: a user id (the System user for the AI) or visitor:{uid}.
CREATE INDEX events_tenant_actor_position_idx ON events (tenant_id, (metadata ->> 'actorId'), global_position);

-- By visitor: the workflow events carry it in their metadata, the visitor's own events and the conflicts
-- in their data. The search uses this very expression.
CREATE INDEX events_tenant_visitor_position_idx
    ON events (tenant_id, (coalesce(metadata ->> 'visitorUid', data ->> 'visitorUid')), global_position);

-- By tool: only ToolCalled events name one.
CREATE INDEX events_tenant_tool_position_idx
    ON events (tenant_id, (data ->> 'tool'), global_position) WHERE event_type = 'ToolCalled';

-- The audit stream's events about a conversation (conflicts name it in their data).
CREATE INDEX events_tenant_audit_conversation_idx
    ON events (tenant_id, (data ->> 'conversationId'), global_position) WHERE stream_category = 'audit';

-- By time: a range of recorded_at, for searches that name no narrower key.
CREATE INDEX events_tenant_recorded_at_idx ON events (tenant_id, recorded_at, global_position);
