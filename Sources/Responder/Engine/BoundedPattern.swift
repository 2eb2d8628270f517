import Synchronization

/// A workflow's regular expression (`matches`), run without backtracking: the pattern is compiled to an
/// automaton that follows every alternative at once (a Pike VM), so matching costs at most the text's
/// length times the pattern's size, whatever the pattern. A backtracking engine (Swift's `Regex`, PCRE)
/// takes exponential time on `(a+)+$` against `aaaa…!`, and glibc's POSIX matcher quadratic time, while
/// the visitor's lock is held. Backreferences and lookaround, which need backtracking, are refused.
///
/// No library on this machine matches in linear time (RE2 is C++ only), so this one is written here.
///
/// Syntax: literals; `.` (any character but a newline); `[...]` and `[^...]` with ranges, `[:alpha:]`-style
/// classes and escapes; `\d \D \w \W \s \S`, `\b \B`, `\n \t \r`, `\` before any other character for
/// itself; `^` and `$` (start and end of the text); groups `(...)` and `(?:...)`; `|`; `* + ?` and
/// `{m}`, `{m,}`, `{m,n}` (n ≤ 1000; a lazy `?` after a quantifier is accepted and changes nothing, as
/// only whether it matches counts). Matched anywhere in the first ``maxSubjectCharacters`` Unicode
/// scalars of the text, ignoring case unless `caseSensitive`. Compiled once per pattern
/// (``cached(_:caseSensitive:)``) and checked when a workflow is published.
public final class BoundedPattern: Sendable {
    public static let maxPatternLength = 500
    /// Characters are Unicode scalars here; a visitor's text has at most 10,000 (grapheme clusters).
    public static let maxSubjectCharacters = 16 * 1024
    /// The largest automaton a pattern may compile to (repetitions are unrolled).
    public static let maxInstructions = 20_000

    public struct Invalid: Error, CustomStringConvertible {
        public var description: String
    }

    let program: [Instruction]
    let sets: [ScalarSet]
    let caseSensitive: Bool

    public init(_ pattern: String, caseSensitive: Bool) throws {
        guard pattern.utf8.count <= Self.maxPatternLength else {
            throw Invalid(description: "a regular expression has at most \(Self.maxPatternLength) bytes")
        }
        var parser = Parser(Array(pattern.unicodeScalars))
        let tree = try parser.parse()
        var compiler = Compiler()
        try compiler.emit(tree)
        compiler.program.append(.match)
        // Ignoring case, the text is folded to lowercase, and so are the pattern's characters.
        program = caseSensitive ? compiler.program : compiler.program.map { instruction in
            if case .scalar(let scalar) = instruction { return .scalar(Self.fold(scalar)) }
            return instruction
        }
        sets = parser.sets
        self.caseSensitive = caseSensitive
    }

    // MARK: Matching

    /// Whether the pattern matches anywhere in the first ``maxSubjectCharacters`` characters of `subject`.
    public func matches(_ subject: String) -> Bool {
        var text = Array(subject.unicodeScalars.prefix(Self.maxSubjectCharacters))
        if !caseSensitive { text = text.map(Self.fold) }
        var current = ThreadList(capacity: program.count)
        var next = ThreadList(capacity: program.count)
        for position in 0...text.count {
            // Unanchored: a new attempt starts at every position, in the same pass.
            if add(0, at: position, text: text, to: &current) { return true }
            guard position < text.count else { break }
            let scalar = text[position]
            next.clear()
            for pc in current.pcs {
                let advances: Bool
                switch program[pc] {
                case .scalar(let expected): advances = scalar == expected
                case .any: advances = scalar != "\n"
                case .set(let index): advances = sets[index].contains(scalar, caseSensitive: caseSensitive)
                default: advances = false
                }
                if advances, add(pc + 1, at: position + 1, text: text, to: &next) { return true }
            }
            swap(&current, &next)
        }
        return false
    }

    /// Adds the thread at `pc` and everything it reaches without consuming a character; `true` on a match.
    private func add(_ start: Int, at position: Int, text: [Unicode.Scalar], to list: inout ThreadList) -> Bool {
        var stack = [start]
        while let pc = stack.popLast() {
            guard list.insert(pc) else { continue }
            switch program[pc] {
            case .match: return true
            case .jump(let target): stack.append(target)
            case .split(let first, let second):
                stack.append(second)
                stack.append(first)
            case .begin: if position == 0 { stack.append(pc + 1) }
            case .end: if position == text.count { stack.append(pc + 1) }
            case .wordBoundary(let wanted):
                let before = position > 0 && Self.isWord(text[position - 1])
                let after = position < text.count && Self.isWord(text[position])
                if (before != after) == wanted { stack.append(pc + 1) }
            case .scalar, .any, .set:
                list.pcs.append(pc)
            }
        }
        return false
    }

    struct ThreadList {
        var pcs: [Int] = []
        private var seen: [Bool]
        private var touched: [Int] = []

        init(capacity: Int) { seen = [Bool](repeating: false, count: capacity) }

        /// Marks `pc` as reached at this position; `false` when it already was.
        mutating func insert(_ pc: Int) -> Bool {
            if seen[pc] { return false }
            seen[pc] = true
            touched.append(pc)
            return true
        }

        mutating func clear() {
            for pc in touched { seen[pc] = false }
            touched.removeAll(keepingCapacity: true)
            pcs.removeAll(keepingCapacity: true)
        }
    }

    static func isWord(_ scalar: Unicode.Scalar) -> Bool {
        scalar == "_" || scalar.properties.isAlphabetic || scalar.properties.numericType == .decimal
    }

    /// Simple case folding: the lowercase of a scalar when it is one scalar.
    static func fold(_ scalar: Unicode.Scalar) -> Unicode.Scalar {
        if scalar.isASCII {
            return ("A"..."Z").contains(scalar) ? Unicode.Scalar(scalar.value + 32)! : scalar
        }
        let lower = scalar.properties.lowercaseMapping.unicodeScalars
        return lower.count == 1 ? lower.first! : scalar
    }

    // MARK: Compiled form

    enum Instruction: Sendable {
        case scalar(Unicode.Scalar)
        case any
        case set(Int)
        case begin
        case end
        case wordBoundary(Bool)
        case split(Int, Int)
        case jump(Int)
        case match
    }

    struct ScalarSet: Sendable {
        var negated = false
        var ranges: [ClosedRange<UInt32>] = []
        var classes: [CharacterClass] = []

        func contains(_ scalar: Unicode.Scalar, caseSensitive: Bool) -> Bool {
            var found = includes(scalar)
            if !found && !caseSensitive {
                // The text is folded to lowercase: an uppercase range matches too.
                let upper = scalar.properties.uppercaseMapping.unicodeScalars
                if upper.count == 1 { found = includes(upper.first!) }
            }
            return found != negated
        }

        private func includes(_ scalar: Unicode.Scalar) -> Bool {
            ranges.contains { $0.contains(scalar.value) } || classes.contains { $0.contains(scalar) }
        }
    }

    enum CharacterClass: Sendable {
        case digit, word, space, alpha, alnum, upper, lower, punct, xdigit, notDigit, notWord, notSpace

        func contains(_ scalar: Unicode.Scalar) -> Bool {
            let properties = scalar.properties
            switch self {
            case .digit: return properties.numericType == .decimal
            case .word: return BoundedPattern.isWord(scalar)
            case .space: return properties.isWhitespace
            case .alpha: return properties.isAlphabetic
            case .alnum: return properties.isAlphabetic || properties.numericType == .decimal
            case .upper: return properties.isUppercase
            case .lower: return properties.isLowercase
            case .punct: return scalar.isASCII ? (0x21...0x7E).contains(scalar.value) && !properties.isAlphabetic && properties.numericType == nil : properties.generalCategory.isPunctuation
            case .xdigit: return properties.isASCIIHexDigit
            case .notDigit: return !CharacterClass.digit.contains(scalar)
            case .notWord: return !CharacterClass.word.contains(scalar)
            case .notSpace: return !CharacterClass.space.contains(scalar)
            }
        }
    }

    indirect enum Node {
        case empty
        case scalar(Unicode.Scalar)
        case any
        case set(Int)
        case begin
        case end
        case wordBoundary(Bool)
        case concat([Node])
        case alternation([Node])
        case repetition(Node, min: Int, max: Int?)
    }

    struct Parser {
        let scalars: [Unicode.Scalar]
        var index = 0
        var sets: [ScalarSet] = []

        init(_ scalars: [Unicode.Scalar]) { self.scalars = scalars }

        var peek: Unicode.Scalar? { index < scalars.count ? scalars[index] : nil }

        mutating func next() -> Unicode.Scalar? {
            defer { index += 1 }
            return peek
        }

        mutating func parse() throws -> Node {
            let node = try alternation()
            guard peek == nil else { throw Invalid(description: "unmatched ) in a regular expression") }
            return node
        }

        mutating func alternation() throws -> Node {
            var branches = [try concatenation()]
            while peek == "|" {
                index += 1
                branches.append(try concatenation())
            }
            return branches.count == 1 ? branches[0] : .alternation(branches)
        }

        mutating func concatenation() throws -> Node {
            var items: [Node] = []
            while let scalar = peek, scalar != "|", scalar != ")" {
                items.append(try repetition())
            }
            return items.isEmpty ? .empty : items.count == 1 ? items[0] : .concat(items)
        }

        mutating func repetition() throws -> Node {
            var node = try atom()
            while let scalar = peek {
                let bounds: (Int, Int?)
                switch scalar {
                case "*": bounds = (0, nil)
                case "+": bounds = (1, nil)
                case "?": bounds = (0, 1)
                case "{":
                    guard let counted = try braces() else { return node }
                    node = .repetition(node, min: counted.0, max: counted.1)
                    skipLazy()
                    continue
                default: return node
                }
                index += 1
                node = .repetition(node, min: bounds.0, max: bounds.1)
                skipLazy()
            }
            return node
        }

        mutating func skipLazy() {
            if peek == "?" { index += 1 }
        }

        /// `{m}`, `{m,}`, `{m,n}`; `nil` (and nothing read) when what follows `{` is not one.
        mutating func braces() throws -> (Int, Int?)? {
            let start = index
            index += 1
            func number() -> Int? {
                var digits = ""
                while let scalar = peek, ("0"..."9").contains(scalar) {
                    digits.unicodeScalars.append(scalar)
                    index += 1
                }
                return digits.isEmpty ? nil : Int(digits.prefix(6))
            }
            guard let low = number() else {
                index = start
                return nil
            }
            var high: Int? = low
            if peek == "," {
                index += 1
                high = number()
            }
            guard peek == "}" else {
                index = start
                return nil
            }
            index += 1
            if let high, high < low { throw Invalid(description: "a repetition {\(low),\(high)} has its bounds reversed") }
            if max(low, high ?? low) > 1000 { throw Invalid(description: "a repetition count is at most 1000") }
            return (low, high)
        }

        mutating func atom() throws -> Node {
            guard let scalar = next() else { throw Invalid(description: "a regular expression ends too early") }
            switch scalar {
            case "(":
                if peek == "?" {
                    guard index + 1 < scalars.count, scalars[index + 1] == ":" else {
                        throw Invalid(description: "lookaround and inline options ((?…) are not supported")
                    }
                    index += 2
                }
                let inner = try alternation()
                guard next() == ")" else { throw Invalid(description: "a group ( is not closed") }
                return inner
            case ")": throw Invalid(description: "unmatched ) in a regular expression")
            case "*", "+", "?": throw Invalid(description: "\(scalar) has nothing to repeat")
            case ".": return .any
            case "^": return .begin
            case "$": return .end
            case "[": return .set(try bracket())
            case "\\": return try escape()
            default: return .scalar(scalar)
            }
        }

        mutating func escape() throws -> Node {
            guard let escaped = next() else { throw Invalid(description: "a regular expression ends with \\") }
            switch escaped {
            case "d": return .set(add(ScalarSet(classes: [.digit])))
            case "D": return .set(add(ScalarSet(classes: [.notDigit])))
            case "w": return .set(add(ScalarSet(classes: [.word])))
            case "W": return .set(add(ScalarSet(classes: [.notWord])))
            case "s": return .set(add(ScalarSet(classes: [.space])))
            case "S": return .set(add(ScalarSet(classes: [.notSpace])))
            case "b": return .wordBoundary(true)
            case "B": return .wordBoundary(false)
            case "n": return .scalar("\n")
            case "t": return .scalar("\t")
            case "r": return .scalar("\r")
            case "1"..."9": throw Invalid(description: "backreferences (\\\(escaped)) are not supported")
            default:
                if escaped.properties.isAlphabetic && escaped.isASCII {
                    throw Invalid(description: "unknown escape \\\(escaped)")
                }
                return .scalar(escaped)
            }
        }

        mutating func add(_ set: ScalarSet) -> Int {
            sets.append(set)
            return sets.count - 1
        }

        mutating func bracket() throws -> Int {
            var set = ScalarSet()
            if peek == "^" {
                set.negated = true
                index += 1
            }
            var first = true
            while true {
                guard let scalar = next() else { throw Invalid(description: "a bracket expression [ is not closed") }
                if scalar == "]" && !first { break }
                first = false
                var low: Unicode.Scalar
                switch scalar {
                case "[" where peek == ":":
                    guard let close = (index..<scalars.count).first(where: { scalars[$0] == ":" && $0 + 1 < scalars.count && scalars[$0 + 1] == "]" && $0 > index })
                    else { throw Invalid(description: "a class [: is not closed") }
                    let name = String(String.UnicodeScalarView(scalars[(index + 1)..<close]))
                    let classes: [String: CharacterClass] = [
                        "digit": .digit, "alpha": .alpha, "alnum": .alnum, "space": .space, "upper": .upper, "lower": .lower, "punct": .punct,
                        "xdigit": .xdigit, "word": .word,
                    ]
                    guard let found = classes[name] else { throw Invalid(description: "unknown class [:\(name):]") }
                    set.classes.append(found)
                    index = close + 2
                    continue
                case "\\":
                    guard let escaped = next() else { throw Invalid(description: "a bracket expression [ is not closed") }
                    switch escaped {
                    case "d": set.classes.append(.digit); continue
                    case "D": set.classes.append(.notDigit); continue
                    case "w": set.classes.append(.word); continue
                    case "W": set.classes.append(.notWord); continue
                    case "s": set.classes.append(.space); continue
                    case "S": set.classes.append(.notSpace); continue
                    case "n": low = "\n"
                    case "t": low = "\t"
                    case "r": low = "\r"
                    default: low = escaped
                    }
                default:
                    low = scalar
                }
                if peek == "-", index + 1 < scalars.count, scalars[index + 1] != "]" {
                    index += 1
                    guard var high = next() else { throw Invalid(description: "a bracket expression [ is not closed") }
                    if high == "\\", let escaped = next() { high = escaped }
                    guard high.value >= low.value else { throw Invalid(description: "a range \(low)-\(high) is reversed") }
                    set.ranges.append(low.value...high.value)
                } else {
                    set.ranges.append(low.value...low.value)
                }
            }
            return add(set)
        }
    }

    struct Compiler {
        var program: [Instruction] = []

        mutating func emit(_ node: Node) throws {
            guard program.count < BoundedPattern.maxInstructions else {
                throw Invalid(description: "the regular expression is too large once its repetitions are counted")
            }
            switch node {
            case .empty: break
            case .scalar(let scalar): program.append(.scalar(scalar))
            case .any: program.append(.any)
            case .set(let index): program.append(.set(index))
            case .begin: program.append(.begin)
            case .end: program.append(.end)
            case .wordBoundary(let wanted): program.append(.wordBoundary(wanted))
            case .concat(let items): for item in items { try emit(item) }
            case .alternation(let branches):
                // split L1, next; L1: first; jump end; next: split L2, … ; last
                var jumps: [Int] = []
                for (offset, branch) in branches.enumerated() {
                    if offset < branches.count - 1 {
                        let split = program.count
                        program.append(.split(split + 1, -1))
                        try emit(branch)
                        jumps.append(program.count)
                        program.append(.jump(-1))
                        program[split] = .split(split + 1, program.count)
                    } else {
                        try emit(branch)
                    }
                }
                for jump in jumps { program[jump] = .jump(program.count) }
            case .repetition(let inner, let min, let max):
                for _ in 0..<min { try emit(inner) }
                if let max {
                    // Each optional copy: split into it or past all of them.
                    var splits: [Int] = []
                    for _ in min..<max {
                        splits.append(program.count)
                        program.append(.split(program.count + 1, -1))
                        try emit(inner)
                    }
                    for split in splits { program[split] = .split(split + 1, program.count) }
                } else {
                    // L: split body, out; body; jump L; out:
                    let loop = program.count
                    program.append(.split(loop + 1, -1))
                    try emit(inner)
                    program.append(.jump(loop))
                    program[loop] = .split(loop + 1, program.count)
                }
            }
        }
    }

    // MARK: Cache

    private struct Key: Hashable {
        var pattern: String
        var caseSensitive: Bool
    }

    private static let cache = Mutex<[Key: BoundedPattern]>([:])
    private static let maxCached = 1000

    /// The compiled pattern, compiled on first use; `nil` when it does not compile.
    public static func cached(_ pattern: String, caseSensitive: Bool) -> BoundedPattern? {
        let key = Key(pattern: pattern, caseSensitive: caseSensitive)
        if let hit = cache.withLock({ $0[key] }) { return hit }
        guard let compiled = try? BoundedPattern(pattern, caseSensitive: caseSensitive) else { return nil }
        cache.withLock { cache in
            if cache.count >= maxCached { cache.removeAll(keepingCapacity: true) }
            cache[key] = compiled
        }
        return compiled
    }
}

extension Unicode.GeneralCategory {
    var isPunctuation: Bool {
        switch self {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation, .initialPunctuation, .finalPunctuation, .otherPunctuation:
            true
        default: false
        }
    }
}
