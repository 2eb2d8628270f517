import SharedTypes
import Testing

/// Patterns are compiled once and shared: every check, from any task, still sees its own answer.
@Suite struct JSONSchemaTests {
    @Test func patternsCheckEveryValueAlsoWhenCheckedAtOnceFromManyTasks() async {
        let schema = JSONSchema.object(["tag": .string("A lowercase tag.", maxLength: 50, pattern: "[a-z0-9][a-z0-9_-]*")], required: ["tag"])
        let cases: [(String, Bool)] = [("shipping", true), ("vip_2", true), ("Shipping", false), ("-x", false), ("a b", false), ("ok-", true)]
        let answers = await withTaskGroup(of: [Bool].self) { group in
            for _ in 0..<16 {
                group.addTask { cases.map { schema.violations(of: .object(["tag": .string($0.0)])).isEmpty } }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(answers.count == 16)
        for answer in answers { #expect(answer == cases.map(\.1)) }
        #expect(schema.violations(of: .object(["tag": .string("Bad")])) == ["arguments.tag: must match [a-z0-9][a-z0-9_-]*"])
    }
}
