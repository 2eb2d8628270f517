import Foundation

/// What a user of convo may do.
public enum UserRole: String, Codable, Sendable, CaseIterable {
    /// Manages tenants, keys and workflows.
    case admin
    /// A person of a tenant who takes conversations over and answers visitors.
    case agent
    /// An agent who may also assign conversations to other agents.
    case supervisor
    /// convo itself: every action the AI takes is recorded with this actor.
    case system
}

/// The id of the System user, seeded by `Migrations/0005_users.sql` with role `system` and the email
/// `system@internal.local`. The database refuses to delete it or change its role. Every event the AI
/// causes carries it as `actorId`.
public let SYSTEM_USER_ID = UUID(uuidString: "00000000-0000-4000-8000-000000000001")!

/// The System actor as event metadata names it.
public enum SystemActor {
    public static let userID = SYSTEM_USER_ID
    public static let email = "system@internal.local"
    public static let actorID = SYSTEM_USER_ID.uuidString.lowercased()
}
