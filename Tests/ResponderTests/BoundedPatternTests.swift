import Foundation
import Testing

@testable import Responder

/// Workflow regular expressions run in time proportional to the text: the patterns that take a
/// backtracking engine exponential time (and glibc's quadratic) finish here on the longest adversarial
/// texts, within the test's limit; and the syntax does what the README says.
@Suite struct BoundedPatternTests {
    @Test(
        .timeLimit(.minutes(1)),
        arguments: [
            ("(a+)+$", "a", "!"), ("(a|aa)+$", "a", "!"), ("(a*)*b", "a", "c"), ("^(\\w+\\s?)*$", "ab ", "!"), ("(.*a){20}", "a", "b"),
            ("(x+x+)+y", "x", "z"),
        ])
    func catastrophicPatternsAreLinear(_ pattern: String, _ unit: String, _ tail: String) throws {
        let compiled = try BoundedPattern(pattern, caseSensitive: true)
        // 10,000 characters, the longest visitor text.
        let subject = String(repeating: unit, count: 10_000 / unit.count) + tail
        _ = compiled.matches(subject)
        // The classic short case a backtracking engine already chokes on.
        #expect(!BoundedPattern.cached("(a+)+$", caseSensitive: true)!.matches(String(repeating: "a", count: 30) + "!") || pattern != "(a+)+$")
    }

    @Test func matchingFollowsTheDocumentedSyntax() throws {
        let order = try BoundedPattern("^order #\\d+$", caseSensitive: false)
        #expect(order.matches("Order #42") && !order.matches("order #x") && !order.matches("my order #42"))
        let word = try BoundedPattern("\\bhelp\\b|\\Wagent", caseSensitive: true)
        #expect(word.matches("I need help now") && word.matches("an agent") && !word.matches("Help"))
        #expect(try BoundedPattern("[\\d]", caseSensitive: true).matches("7") && !BoundedPattern("[\\d]", caseSensitive: true).matches("d"))
        #expect(try BoundedPattern("^[A-Z]{2}-\\d{3}$", caseSensitive: false).matches("ab-123"))
        #expect(try !BoundedPattern("^[A-Z]{2}-\\d{3}$", caseSensitive: true).matches("ab-123"))
        #expect(try BoundedPattern("colou?r|(?:grey|gray)s*", caseSensitive: true).matches("a gray day"))
        #expect(try BoundedPattern("^$", caseSensitive: true).matches("") && !BoundedPattern("^$", caseSensitive: true).matches("x"))
        #expect(try BoundedPattern("a.c", caseSensitive: true).matches("abc") && !BoundedPattern("a.c", caseSensitive: true).matches("a\nc"))
        #expect(try BoundedPattern("x{2,3}y", caseSensitive: true).matches("xxy") && !BoundedPattern("^x{2,3}y", caseSensitive: true).matches("xxxxy"))
        #expect(try BoundedPattern("[[:digit:]]+[[:space:]]", caseSensitive: true).matches("42 "))
        #expect(try BoundedPattern("ÉTÉ", caseSensitive: false).matches("un été"))
        #expect(try BoundedPattern("a{1}b", caseSensitive: true).matches("ab") && BoundedPattern("{x", caseSensitive: true).matches("{x"))
        #expect(try BoundedPattern("refund|return", caseSensitive: false).matches("I want a RETURN label"))
        #expect(try BoundedPattern("[]a]", caseSensitive: true).matches("]"))
        #expect(try BoundedPattern("é+", caseSensitive: true).matches("café"))
        // Only the first 16,384 characters of a text are matched.
        let long = String(repeating: "x", count: BoundedPattern.maxSubjectCharacters) + "needle"
        #expect(!(try BoundedPattern("needle", caseSensitive: true).matches(long)))
    }

    @Test func backreferencesAndBrokenPatternsAreRefusedWhenPublished() {
        for pattern in ["(a)\\1", "(", "a{2,1}", "ends with \\", String(repeating: "a", count: 501), "(?=a)", "*a", "a)", "[a", "a{1001}", "(a{1000}){1000}", "\\q"] {
            #expect(throws: BoundedPattern.Invalid.self, "\(pattern.prefix(20))") { try BoundedPattern(pattern, caseSensitive: true) }
        }
    }
}
