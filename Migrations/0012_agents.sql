-- People in conversations: agents and supervisors of a tenant, each with keys bound to them (scope
-- `agent`), so that every action of a person carries that person's user id. The System user stays the
-- only actor of the AI (no tenant, role `system`).

ALTER TABLE users ADD COLUMN tenant_id text REFERENCES tenants (id);
ALTER TABLE users ADD COLUMN disabled_at timestamptz;

ALTER TABLE users DROP CONSTRAINT users_role_check;
ALTER TABLE users ADD CONSTRAINT users_role_check CHECK (role IN ('admin', 'agent', 'supervisor', 'system'));
-- A person of a tenant belongs to it; the System user to none.
ALTER TABLE users ADD CONSTRAINT users_people_have_a_tenant CHECK ((role IN ('agent', 'supervisor')) = (tenant_id IS NOT NULL));

-- One email per tenant (the same person may work for two tenants, as two users).
ALTER TABLE users DROP CONSTRAINT users_email_key;
CREATE UNIQUE INDEX users_tenant_email ON users (coalesce(tenant_id, ''), lower(email));
CREATE INDEX users_tenant ON users (tenant_id, created_at) WHERE tenant_id IS NOT NULL;

ALTER TABLE api_keys ADD COLUMN user_id uuid REFERENCES users (id);
ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check
    CHECK (scopes <@ ARRAY['ingest', 'read', 'admin', 'agent'] AND cardinality(scopes) > 0);
-- An agent key is a person's, and only an agent key is.
ALTER TABLE api_keys ADD CONSTRAINT api_keys_agent_has_a_user CHECK (('agent' = ANY (scopes)) = (user_id IS NOT NULL));
