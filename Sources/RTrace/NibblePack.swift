/// Nibble-pack (spec/format.md §6.3), transform 2 of ID_SLOTS: two slot codes per byte.
///
/// Slot codes are 0 … top_k-1 or the new marker 0xFF; with `top_k` ≤ 15 each fits in four bits
/// (the marker as 15). Packing halves the symbols the deflate stream codes, so inflating the
/// column takes about half as long, and the file gets smaller (Huffman coding of pairs).
enum NibblePack {
    /// The largest `top_k` whose codes fit a nibble beside the marker.
    static let maxTopK = 15

    /// Packs byte codes (each < 15 or 0xFF): code `i` in the low nibble of byte `i / 2` when `i`
    /// is even, the high nibble when odd.
    static func pack(_ codes: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: (codes.count + 1) / 2)
        codes.withUnsafeBufferPointer { c in
            out.withUnsafeMutableBufferPointer { o in
                let pairs = c.count / 2
                for i in 0..<pairs { o[i] = (c[2 &* i] & 0x0F) | (c[2 &* i &+ 1] << 4) }
                if c.count % 2 == 1 { o[pairs] = c[c.count - 1] & 0x0F }
            }
        }
        return out
    }

    /// Unpacks `count` codes, nibble 15 becoming the new marker 0xFF. Returns nil when an odd
    /// count leaves a non-zero high nibble in the last byte (`packed.count` is `(count + 1) / 2`).
    static func unpack(_ packed: [UInt8], count: Int) -> [UInt8]? {
        precondition(packed.count == (count + 1) / 2)
        if count % 2 == 1, packed[packed.count - 1] >> 4 != 0 { return nil }
        var out = [UInt8](repeating: 0, count: count + 1)
        packed.withUnsafeBufferPointer { p in
            out.withUnsafeMutableBufferPointer { o in
                // Sixteen bytes → 32 codes per step; nibble 15 → 0xFF by OR-ing all ones where it is 15.
                let fifteen = SIMD16<UInt8>(repeating: 15), ones = SIMD16<UInt8>(repeating: 0xFF)
                var i = 0
                let src = UnsafeRawPointer(p.baseAddress!), dst = UnsafeMutableRawPointer(o.baseAddress!)
                while i &+ 16 <= p.count {
                    let v = src.loadUnaligned(fromByteOffset: i, as: SIMD16<UInt8>.self)
                    var lo = v & fifteen, hi = v &>> 4
                    lo.replace(with: ones, where: lo .== fifteen)
                    hi.replace(with: ones, where: hi .== fifteen)
                    // Interleave: code 2j = lo[j], code 2j+1 = hi[j].
                    let a = SIMD16<UInt8>(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2], lo[3], hi[3],
                                          lo[4], hi[4], lo[5], hi[5], lo[6], hi[6], lo[7], hi[7])
                    let b = SIMD16<UInt8>(lo[8], hi[8], lo[9], hi[9], lo[10], hi[10], lo[11], hi[11],
                                          lo[12], hi[12], lo[13], hi[13], lo[14], hi[14], lo[15], hi[15])
                    dst.storeBytes(of: a, toByteOffset: 2 &* i, as: SIMD16<UInt8>.self)
                    dst.storeBytes(of: b, toByteOffset: 2 &* i &+ 16, as: SIMD16<UInt8>.self)
                    i &+= 16
                }
                while i < p.count {
                    let lo = p[i] & 0x0F, hi = p[i] >> 4
                    o[2 &* i] = lo == 15 ? 0xFF : lo
                    o[2 &* i &+ 1] = hi == 15 ? 0xFF : hi
                    i &+= 1
                }
            }
        }
        out.removeLast(out.count - count)
        return out
    }
}
