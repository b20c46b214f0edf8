import Dispatch

/// A slice of one record's rows placed in a chunk (spec/format.md §5.2).
struct Piece {
    /// The record's ordinal in the file.
    var ordinal: UInt64
    var first: Bool
    var last: Bool
    var rowOffset: Int
    var rowCount: Int
}

/// Builds one chunk frame from pieces of records (spec/format.md §4–§6).
struct ChunkEncoder {
    let header: TraceHeader
    /// Column codecs: zlib strategy per column, or nil to store raw.
    var compress: Bool = true
    /// Nibble-pack ID_SLOTS when top_k allows (spec/format.md §6.3).
    var nibblePackSlots = true

    /// Encodes `pieces`, where `records[i]` is the record of `pieces[i]`.
    func encode(pieces: [Piece], records: [TraceRecord]) -> [UInt8] {
        let L = header.model.moeLayers, k = header.model.topK, E = header.model.numExperts
        let R = pieces.reduce(0) { $0 + $1.rowCount }

        var piecesCol = ByteWriter(capacity: pieces.count * 20)
        var recordsCol = ByteWriter()
        var tokens = ByteWriter()
        var logprobs = ByteWriter()
        for (p, rec) in zip(pieces, records) {
            piecesCol.u64(p.ordinal)
            piecesCol.u32((p.first ? 1 : 0) | (p.last ? 2 : 0))
            piecesCol.u32(UInt32(p.rowOffset))
            piecesCol.u32(UInt32(p.rowCount))
            guard p.first else { continue }
            recordsCol.string(rec.uid)
            if let g = rec.group { recordsCol.string(g) } else { recordsCol.u32(0xFFFF_FFFF) }
            recordsCol.u32(UInt32(rec.tokens.count))
            recordsCol.u32(UInt32(rec.promptLength))
            recordsCol.u32(UInt32(rec.start))
            recordsCol.u32(UInt32(rec.rowCount))
            recordsCol.u32(UInt32(rec.logprobs.count))
            recordsCol.u8(rec.reward == nil ? 0 : 1)
            recordsCol.f64(rec.reward ?? 0)
            if let a = rec.attributes { recordsCol.string(a) } else { recordsCol.u32(0) }
            for t in rec.tokens { tokens.u32(UInt32(bitPattern: t)) }
            for v in rec.logprobs { logprobs.u32(v.bitPattern) }
        }

        // Missing bitmap, layer-major over chunk rows.
        var missing = [UInt8](repeating: 0, count: (L * R + 7) / 8)
        var anyMissing = false
        var present = 0
        do {
            var r0 = 0
            for (p, rec) in zip(pieces, records) {
                for r in 0..<p.rowCount {
                    let row = p.rowOffset + r
                    for l in 0..<L where !rec.isPresent(row: row, layer: l) {
                        let bit = l * R + r0 + r
                        missing[bit >> 3] |= UInt8(1) << UInt8(bit & 7)
                        anyMissing = true
                    }
                }
                r0 += p.rowCount
            }
            present = L * R - missing.reduce(0) { $0 + $1.nonzeroBitCount }
        }

        let (slots, newIDs) = IDCoding.encode(pieces: pieces, records: records, layers: L, topK: k,
                                              numExperts: E, width: header.idWidth)

        var columns: [(ColumnID, [UInt8], Int, Zlib.Strategy)] = [
            (.pieces, piecesCol.bytes, 1, .level(1)),
            (.records, recordsCol.bytes, 1, .level(1)),
            (.tokens, tokens.bytes, 4, .level(1)),
        ]
        if header.columns.logprobs { columns.append((.logprobs, logprobs.bytes, 4, .level(1))) }
        if anyMissing { columns.append((.missing, missing, 1, .level(1))) }
        columns.append((.idSlots, slots, 1, .huffmanOnly))
        columns.append((.idNew, newIDs, header.idWidth.size, .huffmanOnly))
        if let d = header.columns.topkWeights {
            columns.append((.weights, Self.layerMajor(pieces, records, L: L, per: k, size: d.size, present: present, \.weights), d.size, .level(3)))
        }
        if let d = header.columns.routerLogits {
            columns.append((.logits, Self.layerMajor(pieces, records, L: L, per: E, size: d.size, present: present, \.logits), d.size, .level(3)))
        }

        // Transform and compress each column; big chunks compress their columns concurrently.
        let n = columns.count
        let outBox = SendableBuffer<(UInt8, UInt8, Int, [UInt8])>(count: n, initial: (0, 0, 0, []))
        defer { outBox.free() }
        let results = outBox.buffer
        let nibbles = nibblePackSlots && k <= NibblePack.maxTopK
        let work: @Sendable (Int) -> Void = { [columns, compress, outBox] i in
            let results = outBox.buffer
            let (id, raw, width, strategy) = columns[i]
            let transform: UInt8, t: [UInt8]
            if id == .idSlots && nibbles {
                (transform, t) = (2, NibblePack.pack(raw))
            } else if width > 1 {
                (transform, t) = (1, Shuffle.shuffle(raw, width: width))
            } else {
                (transform, t) = (0, raw)
            }
            if compress && !t.isEmpty {
                // A shuffled column deflates plane by plane: a plane coding cannot shrink (the low
                // mantissa bytes of floats) is stored and inflates at memory speed.
                let z = transform == 1 ? Zlib.deflate(planes: t, count: width, strategy: strategy) : Zlib.deflate(t, strategy: strategy)
                if z.count < t.count { results[i] = (1, transform, t.count, z); return }
            }
            results[i] = (0, transform, t.count, t)
        }
        let totalRaw = columns.reduce(0) { $0 + $1.1.count }
        if totalRaw > 256 << 10 {
            DispatchQueue.concurrentPerform(iterations: n) { work($0) }
        } else {
            for i in 0..<n { work(i) }
        }

        var frame = ByteWriter(capacity: 28 + 16 * n + results.reduce(0) { $0 + $1.3.count })
        frame.append(Array("RTCK".utf8))
        frame.u32(UInt32(n))
        frame.u32(UInt32(pieces.count))
        frame.u32(UInt32(R))
        frame.u64(UInt64(results.reduce(0) { $0 + $1.3.count }))
        for i in 0..<n {
            let (codec, transform, rawLen, stored) = results[i]
            frame.u16(columns[i].0.rawValue)
            frame.u8(codec)
            frame.u8(transform)
            frame.u32(UInt32(rawLen))
            frame.u32(UInt32(stored.count))
            frame.u32(Zlib.crc32(stored))
        }
        frame.u32(Zlib.crc32(frame.bytes))
        for i in 0..<n { frame.append(results[i].3) }
        return frame.bytes
    }

    /// Gathers a row-major float column into layer-major order over present (layer, row)s.
    static func layerMajor(
        _ pieces: [Piece], _ records: [TraceRecord], L: Int, per: Int, size: Int, present: Int,
        _ column: KeyPath<TraceRecord, FloatArray?>
    ) -> [UInt8] {
        let rowBytes = per * size
        var out = [UInt8](repeating: 0, count: present * rowBytes)
        var o = 0
        out.withUnsafeMutableBytes { dst in
            for l in 0..<L {
                for (p, rec) in zip(pieces, records) {
                    guard let src = rec[keyPath: column] else { continue }
                    src.bytes.withUnsafeBytes { s in
                        for r in p.rowOffset..<(p.rowOffset + p.rowCount) where rec.isPresent(row: r, layer: l) {
                            let from = (r * L + l) * rowBytes
                            dst.baseAddress!.advanced(by: o).copyMemory(from: s.baseAddress!.advanced(by: from), byteCount: rowBytes)
                            o += rowBytes
                        }
                    }
                }
            }
        }
        return out
    }
}
