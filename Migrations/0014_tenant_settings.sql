-- A tenant's settings, as one JSON object: keys convo does not know are kept, absent ones take their
-- defaults (see TenantSettings in SharedTypes). The first: whether a visitor message after resolution
-- reopens the conversation (true unless set).
ALTER TABLE tenants ADD COLUMN settings jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object');
