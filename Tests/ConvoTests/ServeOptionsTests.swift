import ConvoTestSupport
import Foundation
import Testing

/// `convo serve` refuses settings it cannot serve with, saying why, before it listens.
@Suite struct ServeOptionsTests {
    @Test func aPoolTooSmallForTheHeldConnectionsIsRefusedWithTheArithmetic() async throws {
        let env = ["CONVO_DATABASE_URL": try TestDatabase.url.description, "CI": "true"]
        let refused = try await ConvoProcess.run(["serve", "--port", "\(try ServeProcess.freePort())", "--database-pool-size", "4"], environment: env)
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("cannot serve") && refused.stderr.contains("--database-pool-size 9"), "\(refused.stderr)")
        let ingestOnly = try await ConvoProcess.run(
            ["serve", "--port", "\(try ServeProcess.freePort())", "--database-pool-size", "4", "--no-projections", "--no-webhooks"], environment: env)
        #expect(ingestOnly.stderr.contains("--database-pool-size 5"), "\(ingestOnly.stderr)")
        let badSchedule = try await ConvoProcess.run(["serve", "--port", "\(try ServeProcess.freePort())", "--webhook-retry-schedule", "1,x"], environment: env)
        #expect(badSchedule.status != 0 && badSchedule.stderr.contains("retry schedule"), "\(badSchedule.stderr)")
        for value in ["0", "3601", "x"] {
            let badIdle = try await ConvoProcess.run(["serve", "--port", "\(try ServeProcess.freePort())", "--idle-transaction-timeout", value], environment: env)
            #expect(badIdle.status != 0 && badIdle.stderr.contains("idle"), "\(value): \(badIdle.stderr)")
        }
        for value in ["1", "3601", "x"] {
            let badLease = try await ConvoProcess.run(["serve", "--port", "\(try ServeProcess.freePort())", "--lease-timeout", value], environment: env)
            #expect(badLease.status != 0 && badLease.stderr.contains("lease"), "\(value): \(badLease.stderr)")
        }
        let badLeaseVariable = try await ConvoProcess.run(["serve", "--port", "\(try ServeProcess.freePort())"], environment: env.merging(["CONVO_LEASE_TIMEOUT": "0"]) { $1 })
        #expect(badLeaseVariable.status != 0 && badLeaseVariable.stderr.contains("lease"), "\(badLeaseVariable.stderr)")
        for variable in [false, true] {
            let arguments = ["serve", "--port", "\(try ServeProcess.freePort())"] + (variable ? [] : ["--demo-tenant", "Not A Tenant"])
            let badDemo = try await ConvoProcess.run(arguments, environment: variable ? env.merging(["CONVO_DEMO_TENANT": "Not A Tenant"]) { $1 } : env)
            #expect(badDemo.status != 0 && badDemo.stderr.contains("demo tenant"), "\(badDemo.stderr)")
        }
    }
}
