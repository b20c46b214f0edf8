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
        var out = [UInt8](repeating: 0, count: input.count)
        input.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for b in 0..<width {
                    let base = b * n
                    for i in 0..<n { dst[i * width + b] = src[base + i] }
                }
            }
        }
        return out
    }
}
