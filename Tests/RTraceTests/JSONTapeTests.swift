import RTraceTestSupport
import Foundation
import Testing

@testable import RTrace

/// A canonical text of a JSON tree, the same whoever parsed it.
private func canonical(_ v: Any) -> String {
    switch v {
    case let d as [String: Any]: return "{" + d.keys.sorted().map { "\($0)=\(canonical(d[$0]!))" }.joined(separator: ",") + "}"
    case let a as [Any]: return "[" + a.map(canonical).joined(separator: ",") + "]"
    case let s as String: return "s:" + s
    case is NSNull: return "null"
    // 12 digits: Foundation's parser on Linux misrounds the last digit of some doubles (strtod does not).
    case let n as NSNumber: return "n:" + String(format: "%.12g", n.doubleValue)  // and reads true as 1
    case let b as Bool: return b ? "n:1" : "n:0"
    default: return "?"
    }
}

private func canonical(_ v: JSONValue) -> String {
    switch v.kind {
    case .object:
        var pairs: [(String, String)] = []
        var k = v.index + 1
        for _ in 0..<v.count {
            pairs.append((JSONValue(tape: v.tape, index: k).string!, canonical(JSONValue(tape: v.tape, index: k + 1))))
            k = v.tape.nodes[k + 1].next
        }
        // Later duplicates win, as in JSONSerialization.
        var d: [String: String] = [:]
        for (a, b) in pairs { d[a] = b }
        return "{" + d.keys.sorted().map { "\($0)=\(d[$0]!)" }.joined(separator: ",") + "}"
    case .array: return "[" + v.elements.map(canonical).joined(separator: ",") + "]"
    case .string: return "s:" + v.string!
    case .null: return "null"
    case .bool: return v.node.flag ? "n:1" : "n:0"
    case .number: return "n:" + String(format: "%.12g", v.double!)
    }
}

private func randomValue(_ rng: inout TestRNG, depth: Int) -> Any {
    switch rng.int(depth > 3 ? 4 : 7) {
    case 0: return rng.int(2) == 0 ? Int(rng.next() >> UInt64(1 + rng.int(63))) * (rng.int(2) == 0 ? 1 : -1) : rng.unit() * 1e6 - 5e5
    case 1:
        let alphabet = Array("ab\"\\/\n\t\u{1}é€😀 {}[],:")
        return String((0..<rng.int(12)).map { _ in alphabet[rng.int(alphabet.count)] })
    case 2: return NSNull()
    case 3: return rng.int(2) == 0
    case 4, 5: return (0..<rng.int(5)).map { _ in randomValue(&rng, depth: depth + 1) }
    default:
        var d: [String: Any] = [:]
        for _ in 0..<rng.int(5) { d["k\(rng.int(9))\u{e9}\""] = randomValue(&rng, depth: depth + 1) }
        return d
    }
}

@Suite("byte-level JSON and base64 of the engine importers")
struct JSONTapeTests {
    @Test("random JSON texts parse to the tree JSONSerialization finds")
    func agreesWithFoundation() throws {
        var rng = TestRNG(13)
        let tape = JSONTape()
        for _ in 0..<2000 {
            let value = [randomValue(&rng, depth: 0)]
            let text = try JSONSerialization.data(withJSONObject: value, options: rng.int(2) == 0 ? [.prettyPrinted] : [])
            let err = Array(text).withUnsafeBytes { tape.parse($0) }
            #expect(err == nil, "\(String(decoding: text, as: UTF8.self)): \(err?.message ?? "")")
            let mine = Array(text).withUnsafeBytes { p -> String in _ = tape.parse(p); return canonical(tape.root) }
            let theirs = canonical(try JSONSerialization.jsonObject(with: text))
            #expect(mine == theirs, "\(String(decoding: text, as: UTF8.self))\n\(mine)\n\(theirs)")
        }
    }

    @Test("malformed texts are refused with the offset of the fault")
    func malformed() {
        let cases: [(String, Int, String)] = [
            ("{", 1, "a key"), ("[1,]", 3, "expected a value"), ("{\"a\" 1}", 5, "\":\""), ("tru", 0, "expected a value"),
            ("\"abc", 0, "never ends"), ("1 2", 2, "after the JSON value"), ("-", 0, "without digits"), ("1.", 0, "after \".\""),
            ("{\"a\":1,}", 7, "a key"), ("[1 2]", 3, "\",\" or \"]\""), ("", 0, "no JSON value"), ("[[[", 3, "value should be"),
            (String(repeating: "[", count: 600), 512, "deeper"),
        ]
        let tape = JSONTape()
        for (text, offset, what) in cases {
            let e = Array(text.utf8).withUnsafeBytes { tape.parse($0) }
            #expect(e?.offset == offset && e?.message.contains(what) == true, "\(text.prefix(20)): \(String(describing: e))")
        }
    }

    @Test("numbers: integers exactly, NaN and Infinity as Python writes them")
    func numbers() {
        let tape = JSONTape()
        let text = Array("[0, -7, 123456789012345678, 9223372036854775807, 3.0, 2.5, -1e3, NaN, Infinity, -Infinity]".utf8)
        text.withUnsafeBytes { p in
            #expect(tape.parse(p) == nil)
            let v = tape.root.elements
            #expect(v.map(\.int) == [0, -7, 123_456_789_012_345_678, 9_223_372_036_854_775_807, 3, nil, -1000, nil, nil, nil])
            #expect(v[7].double!.isNaN && v[8].double == .infinity && v[9].double == -.infinity)
        }
    }

    @Test("base64: random bytes round-trip against Foundation; bad text names the character")
    func base64() throws {
        var rng = TestRNG(5)
        for n in [0, 1, 2, 3, 4, 5, 63, 64, 65, 1000, 4097] {
            let bytes = (0..<n).map { _ in UInt8(rng.int(256)) }
            let text = Data(bytes).base64EncodedString()
            #expect(try EngineArrays.base64(text, what: "x") == bytes)
            #expect(try EngineArrays.base64(Data(bytes).base64EncodedString(options: [.lineLength64Characters]), what: "x") == bytes)
        }
        let e = #expect(throws: TraceError.self) { try EngineArrays.base64("AAA*AAAA", what: "f") }
        #expect(e?.message.contains("\"*\" at character 3 is not base64") == true, "\(e?.message ?? "")")
        let e2 = #expect(throws: TraceError.self) { try EngineArrays.base64("AAAAA", what: "f") }
        #expect(e2?.message.contains("5 characters is not a multiple of 4") == true, "\(e2?.message ?? "")")
        #expect(throws: TraceError.self) { try EngineArrays.base64("A=AA", what: "f") }
    }
}
