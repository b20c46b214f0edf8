#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A JSON text parsed into a flat tape of nodes that point into its bytes: nothing is copied.
///
/// The engine importers parse one line at a time into the same tape, so a line costs no
/// allocation once the tape has grown. Strings and numbers stay byte ranges until asked for: a
/// megabyte of base64 costs one `memchr` for its closing quote. The bytes must outlive every
/// ``JSONValue`` read from the tape, and the next ``parse(_:)`` invalidates them.
final class JSONTape {
    enum Kind: UInt8 { case object, array, string, number, bool, null }

    struct Node {
        var kind: Kind
        /// Strings: the text holds escapes. Numbers: a fraction or exponent. Bools: true.
        var flag: Bool
        /// Objects: members; arrays: elements.
        var count: Int32 = 0
        /// Offset of the value's first byte (strings: after the opening quote).
        var start: Int
        /// Offset one past the value (strings: the closing quote).
        var end: Int
        /// The tape index after this value and everything inside it.
        var next: Int
    }

    /// Where and why a text is not JSON.
    struct ParseError: Error {
        var offset: Int
        var message: String
    }

    private(set) var nodes: [Node] = []
    private(set) var bytes = UnsafeRawBufferPointer(start: nil, count: 0)
    private var open: [Int] = []
    /// Deeper nesting is refused rather than risked.
    static let maxDepth = 512

    /// The root value of the last parse.
    var root: JSONValue { JSONValue(tape: self, index: 0) }

    /// Parses `text` (one JSON value, surrounding whitespace allowed) onto the tape.
    func parse(_ text: UnsafeRawBufferPointer) -> ParseError? {
        nodes.removeAll(keepingCapacity: true)
        open.removeAll(keepingCapacity: true)
        bytes = text
        let n = text.count
        guard let p = text.baseAddress?.assumingMemoryBound(to: UInt8.self) else {
            return ParseError(offset: 0, message: "no JSON value")
        }
        @inline(__always) func ws(_ i: Int) -> Int {
            var i = i
            while i < n, p[i] == 0x20 || p[i] == 0x09 || p[i] == 0x0D || p[i] == 0x0A { i += 1 }
            return i
        }
        func what(_ i: Int) -> String {
            guard i < n else { return "the end of the line" }
            let c = p[i]
            return c >= 0x20 && c < 0x7F ? "\"\(Character(Unicode.Scalar(c)))\"" : "byte 0x\(String(c, radix: 16))"
        }
        /// A string starting at the quote at `i`: appends its node, returns the offset after it.
        func string(_ i: Int) -> Result<Int, ParseError> {
            let s = i + 1
            var from = s
            while true {
                guard from < n, let hit = memchr(p + from, 0x22, n - from) else {
                    return .failure(ParseError(offset: i, message: "a string that never ends"))
                }
                let q = p.distance(to: hit.assumingMemoryBound(to: UInt8.self))
                var b = q - 1
                while b >= s && p[b] == 0x5C { b -= 1 }
                if (q - 1 - b) % 2 == 0 {
                    let escaped = q > s && memchr(p + s, 0x5C, q - s) != nil
                    nodes.append(Node(kind: .string, flag: escaped, start: s, end: q, next: nodes.count + 1))
                    return .success(q + 1)
                }
                from = q + 1
            }
        }
        /// An object key and its colon at `i` (after whitespace): returns the offset after the colon.
        func key(_ i: Int) -> Result<Int, ParseError> {
            guard i < n, p[i] == 0x22 else { return .failure(ParseError(offset: i, message: "expected a key string, found \(what(i))")) }
            switch string(i) {
            case .failure(let e): return .failure(e)
            case .success(let j):
                let k = ws(j)
                guard k < n, p[k] == 0x3A else { return .failure(ParseError(offset: k, message: "expected \":\" after a key, found \(what(k))")) }
                return .success(k + 1)
            }
        }
        func literal(_ i: Int, _ word: StaticString, _ kind: Kind, _ flag: Bool) -> Int? {
            let m = word.utf8CodeUnitCount
            guard i + m <= n, memcmp(p + i, word.utf8Start, m) == 0 else { return nil }
            nodes.append(Node(kind: kind, flag: flag, start: i, end: i + m, next: nodes.count + 1))
            return i + m
        }

        var i = 0
        value: while true {
            i = ws(i)
            guard i < n else {
                return ParseError(offset: i, message: open.isEmpty ? "no JSON value" : "the text ends where a value should be")
            }
            var complete = true
            switch p[i] {
            case 0x7B, 0x5B:  // { [
                guard open.count < JSONTape.maxDepth else { return ParseError(offset: i, message: "nested deeper than \(JSONTape.maxDepth) levels") }
                let isObject = p[i] == 0x7B
                open.append(nodes.count)
                nodes.append(Node(kind: isObject ? .object : .array, flag: false, start: i, end: i, next: 0))
                let j = ws(i + 1)
                if j < n && p[j] == (isObject ? 0x7D : 0x5D) {
                    close(at: j)
                    i = j + 1
                } else if isObject {
                    switch key(j) {
                    case .failure(let e): return e
                    case .success(let k): i = k
                    }
                    complete = false
                } else {
                    i = j
                    complete = false
                }
            case 0x22:
                switch string(i) {
                case .failure(let e): return e
                case .success(let j): i = j
                }
            case 0x74: guard let j = literal(i, "true", .bool, true) else { return ParseError(offset: i, message: "expected a value, found \(what(i))") }; i = j
            case 0x66: guard let j = literal(i, "false", .bool, false) else { return ParseError(offset: i, message: "expected a value, found \(what(i))") }; i = j
            case 0x6E: guard let j = literal(i, "null", .null, false) else { return ParseError(offset: i, message: "expected a value, found \(what(i))") }; i = j
            case 0x2D where i + 1 < n && p[i + 1] == 0x49:  // -Infinity
                guard let j = literal(i, "-Infinity", .number, true) else { return ParseError(offset: i, message: "expected a value, found \(what(i))") }
                i = j
            case 0x2D, 0x30...0x39:  // - 0-9
                let s = i
                var j = i
                if p[j] == 0x2D { j += 1 }
                let d0 = j
                while j < n, p[j] >= 0x30 && p[j] <= 0x39 { j += 1 }
                guard j > d0 else { return ParseError(offset: s, message: "a number without digits") }
                var fraction = false
                if j < n, p[j] == 0x2E {
                    fraction = true
                    j += 1
                    let f0 = j
                    while j < n, p[j] >= 0x30 && p[j] <= 0x39 { j += 1 }
                    guard j > f0 else { return ParseError(offset: s, message: "a number with no digits after \".\"") }
                }
                if j < n, p[j] == 0x65 || p[j] == 0x45 {
                    fraction = true
                    j += 1
                    if j < n, p[j] == 0x2B || p[j] == 0x2D { j += 1 }
                    let e0 = j
                    while j < n, p[j] >= 0x30 && p[j] <= 0x39 { j += 1 }
                    guard j > e0 else { return ParseError(offset: s, message: "a number with no exponent digits") }
                }
                nodes.append(Node(kind: .number, flag: fraction, start: s, end: j, next: nodes.count + 1))
                i = j
            case 0x4E, 0x49:  // NaN, Infinity (Python's json.dumps writes them)
                if let j = literal(i, "NaN", .number, true) ?? literal(i, "Infinity", .number, true) { i = j } else {
                    return ParseError(offset: i, message: "expected a value, found \(what(i))")
                }
            default:
                return ParseError(offset: i, message: "expected a value, found \(what(i))")
            }
            if !complete { continue value }
            // A value is complete: count it in its container, then a comma or the container's end.
            while let top = open.last {
                nodes[top].count += 1
                i = ws(i)
                let isObject = nodes[top].kind == .object
                guard i < n else { return ParseError(offset: i, message: "the text ends inside an \(isObject ? "object" : "array")") }
                if p[i] == 0x2C {
                    if isObject {
                        switch key(ws(i + 1)) {
                        case .failure(let e): return e
                        case .success(let k): i = k
                        }
                    } else {
                        i += 1
                    }
                    continue value
                }
                guard p[i] == (isObject ? 0x7D : 0x5D) else {
                    return ParseError(offset: i, message: "expected \",\" or \"\(isObject ? "}" : "]")\", found \(what(i))")
                }
                close(at: i)
                i += 1
            }
            i = ws(i)
            guard i == n else { return ParseError(offset: i, message: "\(what(i)) after the JSON value") }
            return nil
        }
    }

    private func close(at i: Int) {
        let top = open.removeLast()
        nodes[top].end = i + 1
        nodes[top].next = nodes.count
    }
}

/// One value on a ``JSONTape``: typed accessors that decode only what is read.
struct JSONValue {
    let tape: JSONTape
    let index: Int

    var node: JSONTape.Node { tape.nodes[index] }
    var kind: JSONTape.Kind { node.kind }
    var isNull: Bool { kind == .null }
    /// The byte offset of the value in the parsed text.
    var offset: Int { node.start }

    /// The member `key` of an object (nil when absent or when this is not an object).
    subscript(key: String) -> JSONValue? {
        let n = node
        guard n.kind == .object else { return nil }
        var k = index + 1
        var key = key
        return key.withUTF8 { want in
            for _ in 0..<n.count {
                let kn = tape.nodes[k]
                if kn.flag {
                    if JSONValue(tape: tape, index: k).string.map({ Array($0.utf8) == Array(want) }) == true {
                        return JSONValue(tape: tape, index: k + 1)
                    }
                } else if kn.end - kn.start == want.count,
                          want.count == 0 || memcmp(tape.bytes.baseAddress! + kn.start, want.baseAddress!, want.count) == 0 {
                    return JSONValue(tape: tape, index: k + 1)
                }
                k = tape.nodes[k + 1].next
            }
            return nil
        }
    }

    /// The member `key`, treating JSON `null` as absent.
    func field(_ key: String) -> JSONValue? {
        guard let v = self[key], !v.isNull else { return nil }
        return v
    }

    /// The member names of an object, in order.
    var keys: [String] {
        guard kind == .object else { return [] }
        var out: [String] = []
        var k = index + 1
        for _ in 0..<node.count {
            out.append(JSONValue(tape: tape, index: k).string ?? "")
            k = tape.nodes[k + 1].next
        }
        return out
    }

    /// Elements of an array (members' values of an object), or 0.
    var count: Int { kind == .array || kind == .object ? Int(node.count) : 0 }

    /// Calls `body` with each element of an array, in order.
    func forEachElement<E: Error>(_ body: (_ i: Int, _ v: JSONValue) throws(E) -> Void) throws(E) {
        guard kind == .array else { return }
        var k = index + 1
        for i in 0..<Int(node.count) {
            try body(i, JSONValue(tape: tape, index: k))
            k = tape.nodes[k].next
        }
    }

    /// The elements of an array.
    var elements: [JSONValue] {
        var out: [JSONValue] = []
        out.reserveCapacity(count)
        forEachElement { (_, v) in out.append(v) }
        return out
    }

    /// The raw bytes between a string's quotes (escapes not decoded).
    var rawStringBytes: UnsafeRawBufferPointer? {
        let n = node
        guard n.kind == .string else { return nil }
        return UnsafeRawBufferPointer(rebasing: tape.bytes[n.start..<n.end])
    }

    /// A string's text, escapes decoded (invalid UTF-8 repaired).
    var string: String? {
        guard let raw = rawStringBytes else { return nil }
        if !node.flag { return String(decoding: raw, as: UTF8.self) }
        return String(decoding: JSONValue.unescape(raw), as: UTF8.self)
    }

    /// A string's bytes with escapes decoded.
    var stringBytes: [UInt8]? {
        guard let raw = rawStringBytes else { return nil }
        return node.flag ? JSONValue.unescape(raw) : Array(raw)
    }

    /// An integer number, exactly (`3.0` counts; `3.5` and out-of-range values do not).
    var int: Int64? {
        let n = node
        guard n.kind == .number else { return nil }
        if !n.flag {
            let p = tape.bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
            var j = n.start
            let neg = p[j] == 0x2D
            if neg { j += 1 }
            // Accumulate negatively: Int64.min has no positive counterpart.
            var v: Int64 = 0
            var exact = true
            while j < n.end {
                let (m, o1) = v.multipliedReportingOverflow(by: 10)
                let (d, o2) = m.subtractingReportingOverflow(Int64(p[j] &- 0x30))
                if o1 || o2 { exact = false; break }
                v = d
                j += 1
            }
            if exact {
                if neg { return v }
                if v != .min { return -v }
            }
        }
        guard let d = double, let i = Int64(exactly: d) else { return nil }
        return i
    }

    /// A number as a double (`NaN` and `Infinity` as Python writes them included).
    var double: Double? {
        let n = node
        guard n.kind == .number else { return nil }
        let len = n.end - n.start
        if len == 3 && tape.bytes[n.start] == 0x4E { return .nan }
        if len == 8 && tape.bytes[n.start] == 0x49 { return .infinity }
        if len == 9 && tape.bytes[n.start + 1] == 0x49 { return -.infinity }
        return withUnsafeTemporaryAllocation(of: CChar.self, capacity: len + 1) { buf in
            for j in 0..<len { buf[j] = CChar(bitPattern: tape.bytes[n.start + j]) }
            buf[len] = 0
            return strtod(buf.baseAddress!, nil)
        }
    }

    /// What the value is, for error messages: `a string of 12 characters`, `the number 3.5`, ….
    var summary: String {
        let n = node
        switch n.kind {
        case .object: return "an object"
        case .array: return "an array of \(n.count)"
        case .string: return "a string of \(n.end - n.start) bytes"
        case .number: return "the number \(String(decoding: UnsafeRawBufferPointer(rebasing: tape.bytes[n.start..<n.end]), as: UTF8.self))"
        case .bool: return n.flag ? "true" : "false"
        case .null: return "null"
        }
    }

    /// Decodes JSON string escapes (`\n`, `\uXXXX` with surrogate pairs, …) into UTF-8.
    static func unescape(_ raw: UnsafeRawBufferPointer) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(raw.count)
        var i = 0
        func hex4(_ at: Int) -> UInt32? {
            guard at + 4 <= raw.count else { return nil }
            var v: UInt32 = 0
            for j in at..<at + 4 {
                let c = raw[j]
                let d: UInt8
                switch c {
                case 0x30...0x39: d = c - 0x30
                case 0x61...0x66: d = c - 0x61 + 10
                case 0x41...0x46: d = c - 0x41 + 10
                default: return nil
                }
                v = v << 4 | UInt32(d)
            }
            return v
        }
        func put(_ scalar: UInt32) {
            let s = Unicode.Scalar(scalar) ?? "\u{FFFD}"
            out.append(contentsOf: Array(String(Character(s)).utf8))
        }
        while i < raw.count {
            let c = raw[i]
            guard c == 0x5C, i + 1 < raw.count else { out.append(c); i += 1; continue }
            let e = raw[i + 1]
            i += 2
            switch e {
            case 0x6E: out.append(0x0A)
            case 0x74: out.append(0x09)
            case 0x72: out.append(0x0D)
            case 0x62: out.append(0x08)
            case 0x66: out.append(0x0C)
            case 0x75:
                guard var u = hex4(i) else { put(0xFFFD); continue }
                i += 4
                if (0xD800..<0xDC00).contains(u), i + 6 <= raw.count, raw[i] == 0x5C, raw[i + 1] == 0x75,
                   let lo = hex4(i + 2), (0xDC00..<0xE000).contains(lo) {
                    u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00)
                    i += 6
                }
                put(u)
            default: out.append(e)  // \" \\ \/
            }
        }
        return out
    }
}
