/// Standard base64 (RFC 4648 §4, `+` and `/`, `=` padding) decoded straight from bytes into a
/// caller's buffer, four characters at a time through four lookup tables.
///
/// The engines' routing payloads are megabytes of base64 per response; Foundation's decoder
/// needs a `String` and a `Data` copy of each. This one reads the JSON line's bytes in place.
enum Base64 {
    /// `tables[i][c]`: the 6-bit value of character `c` placed for position `i` of a quad;
    /// `invalid` (bit 24) for a character outside the alphabet.
    static let invalid: UInt32 = 1 << 24
    static let tables: [[UInt32]] = {
        var t = [[UInt32]](repeating: [UInt32](repeating: invalid, count: 256), count: 4)
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        for (v, c) in alphabet.enumerated() {
            for i in 0..<4 { t[i][Int(c)] = UInt32(v) << UInt32(18 - 6 * i) }
        }
        return t
    }()

    /// The decoded length of `n` base64 characters ending in `padding` `=` signs, or nil when
    /// `n` is not a multiple of 4.
    static func decodedCount(characters n: Int, padding: Int) -> Int? {
        n % 4 == 0 ? n / 4 * 3 - padding : nil
    }

    /// Why a text is not base64, for errors.
    struct Failure: Error {
        /// Index of the first offending character (or the length, for a bad length).
        var at: Int
        var reason: String
    }

    /// Decodes `src` (no whitespace) into `dst`, which must hold ``decodedCount(characters:padding:)``
    /// bytes. Returns the bytes written.
    static func decode(_ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer) -> Result<Int, Failure> {
        let n = src.count
        if n == 0 { return .success(0) }
        guard n % 4 == 0 else {
            return .failure(Failure(at: n, reason: "\(n) characters is not a multiple of 4"))
        }
        var pad = 0
        if src[n - 1] == UInt8(ascii: "=") { pad = src[n - 2] == UInt8(ascii: "=") ? 2 : 1 }
        let out = n / 4 * 3 - pad
        precondition(dst.count >= out, "base64 destination too small")
        return tables[0].withUnsafeBufferPointer { t0 in
            tables[1].withUnsafeBufferPointer { t1 in
                tables[2].withUnsafeBufferPointer { t2 in
                    tables[3].withUnsafeBufferPointer { t3 in
                        let s = src.baseAddress!.assumingMemoryBound(to: UInt8.self)
                        let d = dst.baseAddress!.assumingMemoryBound(to: UInt8.self)
                        let quads = n / 4 - 1  // the last quad may hold padding
                        var i = 0, o = 0, bad: UInt32 = 0
                        while i < quads * 4 {
                            let x = t0[Int(s[i])] | t1[Int(s[i + 1])] | t2[Int(s[i + 2])] | t3[Int(s[i + 3])]
                            bad |= x
                            d[o] = UInt8(truncatingIfNeeded: x >> 16)
                            d[o + 1] = UInt8(truncatingIfNeeded: x >> 8)
                            d[o + 2] = UInt8(truncatingIfNeeded: x)
                            i += 4
                            o += 3
                        }
                        if bad & invalid != 0 { return .failure(firstInvalid(src, t0)) }
                        // The last quad: "xx==", "xxx=" or "xxxx".
                        let a = Int(s[i]), b = Int(s[i + 1])
                        let c = pad == 2 ? Int(UInt8(ascii: "A")) : Int(s[i + 2])
                        let e = pad >= 1 ? Int(UInt8(ascii: "A")) : Int(s[i + 3])
                        let x = t0[a] | t1[b] | t2[c] | t3[e]
                        if x & invalid != 0 { return .failure(firstInvalid(src, t0)) }
                        // Stray bits below the last character's data are ignored, as Python's decoder does.
                        d[o] = UInt8(truncatingIfNeeded: x >> 16)
                        if pad < 2 { d[o + 1] = UInt8(truncatingIfNeeded: x >> 8) }
                        if pad < 1 { d[o + 2] = UInt8(truncatingIfNeeded: x) }
                        return .success(out)
                    }
                }
            }
        }
    }

    /// The first character outside the alphabet (`=` counts only in the last two places).
    private static func firstInvalid(_ src: UnsafeRawBufferPointer, _ t0: UnsafeBufferPointer<UInt32>) -> Failure {
        let n = src.count
        for i in 0..<n {
            let c = src[i]
            if c == UInt8(ascii: "=") && i >= n - 2 && (i == n - 1 || src[n - 1] == c) { continue }
            if t0[Int(c)] & invalid != 0 {
                let shown = c >= 0x20 && c < 0x7F ? "\"\(Character(Unicode.Scalar(c)))\"" : "byte 0x\(String(c, radix: 16))"
                return Failure(at: i, reason: "\(shown) at character \(i) is not base64")
            }
        }
        return Failure(at: n, reason: "misplaced padding")
    }
}
