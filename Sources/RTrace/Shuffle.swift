/// Byte-shuffle (spec/format.md §6.1): groups byte `b` of every `width`-byte element together.
enum Shuffle {
    /// Stored byte `b * n + i` = byte `b` of element `i`.
    static func shuffle(_ input: [UInt8], width: Int) -> [UInt8] {
        guard width > 1, !input.isEmpty else { return input }
        let n = input.count / width
        var out = [UInt8](repeating: 0, count: input.count)
        input.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for b in 0..<width {
                    let base = b * n
                    for i in 0..<n { dst[base + i] = src[i * width + b] }
                }
            }
        }
        return out
    }

    /// The inverse of ``shuffle(_:width:)``.
    static func unshuffle(_ input: [UInt8], width: Int) -> [UInt8] {
        guard width > 1, !input.isEmpty else { return input }
        let n = input.count / width
        // Every output byte is written below, so the array is not zero-filled first.
        return [UInt8](unsafeUninitializedCapacity: input.count) { dst, count in
            count = input.count
            input.withUnsafeBufferPointer { src in
                let raw = UnsafeMutableRawPointer(dst.baseAddress!)
                switch width {
                case 2:  // bf16/f16: one 16-bit store per value
                    let o = raw.assumingMemoryBound(to: UInt16.self)
                    for i in 0..<n { o[i] = (UInt16(src[i]) | UInt16(src[n &+ i]) << 8).littleEndian }
                case 4:
                    let o = raw.assumingMemoryBound(to: UInt32.self)
                    for i in 0..<n {
                        let v = UInt32(src[i]) | UInt32(src[n &+ i]) << 8 | UInt32(src[2 &* n &+ i]) << 16 | UInt32(src[3 &* n &+ i]) << 24
                        o[i] = v.littleEndian
                    }
                default:
                    for b in 0..<width {
                        let base = b * n
                        for i in 0..<n { dst[i * width + b] = src[base + i] }
                    }
                }
            }
        }
    }
}
