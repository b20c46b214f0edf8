/// Text formatted straight into bytes, for output with millions of lines or numbers (`view`): no String
/// per line or per number, no JSONSerialization tree. A local value (not a class property), so appending
/// costs no exclusivity or uniqueness checks.
struct ByteText {
    var bytes: [UInt8] = []

    init(capacity: Int = 1 << 16) { bytes.reserveCapacity(capacity) }

    mutating func append(_ s: String) { bytes.append(contentsOf: s.utf8) }

    mutating func append(byte: UInt8) { bytes.append(byte) }

    /// Appends `v` in decimal.
    mutating func append(decimal v: Int) {
        if v < 0 { bytes.append(UInt8(ascii: "-")) }
        var m = v.magnitude
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // up to 20 digits, least significant first
        var n = 0
        withUnsafeMutableBytes(of: &digits) { d in
            repeat { d[n] = UInt8(ascii: "0") &+ UInt8(m % 10); m /= 10; n += 1 } while m > 0
            while n > 0 { n -= 1; bytes.append(d[n]) }
        }
    }

    /// Appends a JSON string literal: quotes, `"` and `\` escaped, control characters as `\u00XX`.
    mutating func append(jsonString s: String) {
        bytes.append(UInt8(ascii: "\""))
        for c in s.utf8 {
            switch c {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"): bytes.append(UInt8(ascii: "\\")); bytes.append(c)
            case UInt8(ascii: "\n"): bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "n"))
            case UInt8(ascii: "\t"): bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "t"))
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: Array("\\u00".utf8))
                bytes.append(hex[Int(c >> 4)]); bytes.append(hex[Int(c & 15)])
            default: bytes.append(c)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    /// Appends a JSON number for `x`: the shortest decimal that reads back as the same Double (an integral
    /// value without ".0"); a non-finite value as the string "nan", "inf" or "-inf".
    mutating func append(jsonNumber x: Double) {
        if !x.isFinite {
            append(jsonString: x.isNaN ? "nan" : (x < 0 ? "-inf" : "inf"))
        } else if x == x.rounded(), abs(x) < 1e15 {
            if x == 0 && x.sign == .minus { append("-0") } else { append(decimal: Int(x)) }
        } else {
            append(x.description)
        }
    }

    /// Appends a JSON array of `count` elements, each written by `element`.
    mutating func appendJSONArray(_ count: Int, _ element: (inout ByteText, Int) -> Void) {
        bytes.append(UInt8(ascii: "["))
        for i in 0..<count {
            if i > 0 { bytes.append(UInt8(ascii: ",")) }
            element(&self, i)
        }
        bytes.append(UInt8(ascii: "]"))
    }

    /// Appends `"key":` (the key is plain ASCII).
    mutating func append(key: String) {
        bytes.append(UInt8(ascii: "\""))
        append(key)
        bytes.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: ":")])
    }
}
