import Foundation
@testable import RTraceCLI
import Testing

@Suite("ByteText: the bytes view writes")
struct ByteTextTests {
    @Test("decimals, JSON strings and JSON numbers read back as the values written")
    func roundTrip() throws {
        let ints = [0, 1, -1, 9, 10, 65_535, -65_535, Int.max, Int.min]
        let strings = ["", "s0", "quote \" and back\\slash", "tab\tnew\nline\u{1}\u{1f}", "ünïcødé ✓", "a/b"]
        let doubles: [Double] = [0, 1, -2, 0.1, -1.5932689905166626, 1e-5, 3.4e38, 1e300, 5e-324, 123456789012345.0,
                                 Double(Float(0.19921875)), 2.5e15, -0.0]
        var t = ByteText()
        t.appendJSONArray(ints.count) { t, i in t.append(decimal: ints[i]) }
        t.append(byte: UInt8(ascii: "\n"))
        t.appendJSONArray(strings.count) { t, i in t.append(jsonString: strings[i]) }
        t.append(byte: UInt8(ascii: "\n"))
        t.appendJSONArray(doubles.count) { t, i in t.append(jsonNumber: doubles[i]) }
        t.append(byte: UInt8(ascii: "\n"))
        t.appendJSONArray(3) { t, i in t.append(jsonNumber: [Double.nan, .infinity, -.infinity][i]) }
        let lines = String(decoding: t.bytes, as: UTF8.self).split(separator: "\n").map { Data($0.utf8) }
        #expect(lines.count == 4)
        #expect(String(decoding: lines[0], as: UTF8.self) == "[\(ints.map(String.init).joined(separator: ","))]")
        #expect(try JSONSerialization.jsonObject(with: lines[1]) as? [String] == strings)
        let got = try #require(try JSONSerialization.jsonObject(with: lines[2]) as? [NSNumber])
        #expect(got.map(\.doubleValue) == doubles)
        #expect(try JSONSerialization.jsonObject(with: lines[3]) as? [String] == ["nan", "inf", "-inf"])
    }
}
