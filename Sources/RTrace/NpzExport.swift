/// Writes trace records as `.npz` arrays (the inverse of ``NpzImport``, bit-exact), streaming:
/// `rtrace export --to npz`.
///
/// A zip is written front to back, one member after another, while the records arrive once, in
/// order. When the shape of `topk_ids` is known before the first record (``Layout``, from a
/// complete file's index), its member is written as the records arrive; every other array (and
/// `topk_ids` too without a layout: a pipe, or a file without index) is spooled unpadded to a
/// temporary file (``TempFile``) and copied into the archive, padded, at ``finish()``. Memory is one
/// record plus the per-sequence values (uids, counts), whatever the trace's size; the temporary
/// files hold the spooled arrays.
public final class NpzExport {
    /// The shape of `topk_ids`, known from an index before any record is read.
    public struct Layout: Sendable {
        /// Records in the trace.
        public var sequences: Int
        /// The most rows of any record.
        public var maxRows: Int

        public init(sequences: Int, maxRows: Int) {
            self.sequences = sequences
            self.maxRows = maxRows
        }

        /// The layout an index gives.
        public init(index: TraceIndex) {
            self.init(sequences: index.records.count, maxRows: index.records.map(\.rowCount).max() ?? 0)
        }
    }

    /// One row-major array being exported: each record adds `count` elements, padded to the widest.
    private final class Column {
        let name: String
        let dtype: String
        let itemSize: Int
        /// One padding element.
        let pad: [UInt8]
        /// Elements each record gave, in order.
        var counts: [Int] = []
        /// Where unpadded elements wait for ``NpzExport/finish()``; nil when written as they come.
        var spool: (any ByteSpool)?

        init(_ name: String, dtype: String, pad: Int64, spool: (any ByteSpool)?) {
            self.name = name
            self.dtype = dtype
            self.itemSize = NpyHeader(dtype: dtype, shape: []).itemSize
            var b = [UInt8](repeating: 0, count: itemSize)
            storeInt(pad, &b, 0, itemSize)
            self.pad = b
            self.spool = spool
        }
    }

    private let h: TraceHeader
    private let target: any NpyArrayTarget
    private let layout: Layout?
    private let L: Int, k: Int, E: Int, LA: Int
    private let fullAxis: Bool
    /// Whether a one-sequence trace imported from `[rows, layers, k]` arrays gets them back.
    private let single: Bool
    private let ids: Column, tokens: Column
    private let weights: Column?, logits: Column?, logprobs: Column?
    /// Per-sequence values.
    private var rowCounts: [Int] = [], promptLens: [Int64] = [], starts: [Int64] = []
    private var uids: [String] = [], groups: [String?] = [], rewards: [Double?] = []
    private var anyTokens = false
    /// The record being encoded, and padding elements to copy from.
    private var buffer: [UInt8] = [], padding: [UInt8] = []

    /// Starts an `.npz` on `sink`, deflating members when `compress`. With a `layout` (from the
    /// trace's index), `topk_ids` is written as the records arrive; everything else is spooled to
    /// temporary files.
    public convenience init(header: TraceHeader, sink: OutputSink, compress: Bool, layout: Layout?) throws(TraceError) {
        try self.init(header: header, target: ZipArrayTarget(ZipWriter(sink: sink), compress: compress), layout: layout) { name throws(TraceError) in
            try TempFile(what: "the \(name) array (rtrace export spools it while writing topk_ids)")
        }
    }

    init(header: TraceHeader, target: any NpyArrayTarget, layout: Layout?, spool: (String) throws(TraceError) -> any ByteSpool) throws(TraceError) {
        h = header
        self.target = target
        self.layout = layout
        let attr = header.attributes, p = NpzConversion.attrPrefix
        (L, k, E) = (header.model.moeLayers, header.model.topK, header.model.numExperts)
        fullAxis = attr[p + "layers"] == "decoder"
        LA = fullAxis ? header.model.numLayers : L
        single = attr[p + "layout"] == "single"
        let idSpool: (any ByteSpool)? = layout == nil ? try spool("topk_ids") : nil
        ids = Column("topk_ids", dtype: attr[p + "topk_ids.dtype"] ?? "i4", pad: -1, spool: idSpool)
        tokens = Column("tokens", dtype: attr[p + "tokens.dtype"] ?? "i4", pad: -1, spool: try spool("tokens"))
        func floatColumn(_ name: String, _ d: FloatDType?) throws(TraceError) -> Column? {
            guard let d else { return nil }
            return Column(name, dtype: d == .f16 ? "f2" : d == .f32 ? "f4" : "u2", pad: 0, spool: try spool(name))
        }
        weights = try floatColumn("topk_weights", header.columns.topkWeights)
        logits = try floatColumn("router_logits", header.columns.routerLogits)
        logprobs = header.columns.logprobs ? Column("logprobs", dtype: attr[p + "logprobs.dtype"] ?? "f4", pad: 0, spool: try spool("logprobs")) : nil
        if let layout {
            try target.begin("topk_ids", NpyHeader(dtype: ids.dtype, shape: idShape(layout.sequences, layout.maxRows)))
        }
    }

    /// The arrays `records` export to, in memory (``NpzConversion/makeArrays(header:records:)``).
    static func arrays(header: TraceHeader, records: [TraceRecord]) -> [(String, NpyArray)] {
        let target = MemoryArrayTarget()
        let layout = Layout(sequences: records.count, maxRows: records.map(\.rowCount).max() ?? 0)
        do throws(TraceError) {
            let e = try NpzExport(header: header, target: target, layout: layout) { _ in MemorySpool() }
            for r in records { try e.add(r) }
            try e.finish()
        } catch {
            preconditionFailure("exporting records in memory failed: \(error)")
        }
        return target.arrays
    }

    private func idShape(_ S: Int, _ R: Int) -> [Int] { single && S == 1 ? [R, LA, k] : [S, R, LA, k] }

    /// Adds the next record.
    public func add(_ rec: TraceRecord) throws(TraceError) {
        let s = rowCounts.count
        if let layout, s >= layout.sequences || rec.rowCount > layout.maxRows {
            throw TraceError(.corrupt, "record \(s) (\(rec.uid), \(rec.rowCount) rows) is not what the index lists (\(layout.sequences) records of at most \(layout.maxRows) rows)")
        }
        rowCounts.append(rec.rowCount)
        promptLens.append(Int64(rec.promptLength))
        starts.append(Int64(rec.start))
        uids.append(rec.uid)
        groups.append(rec.group)
        rewards.append(rec.reward)
        anyTokens = anyTokens || !rec.tokens.isEmpty

        encodeIDs(rec)
        try put(ids, rec.rowCount * LA * k, width: layout.map { $0.maxRows * LA * k })
        buffer.removeAll(keepingCapacity: true)
        for t in rec.tokens { appendInt(Int64(t), tokens.itemSize) }
        try put(tokens, rec.tokens.count, width: nil)
        if let c = weights, let w = rec.weights {
            encodeLayers(w.bytes, rows: rec.rowCount, per: k * w.dtype.size)
            try put(c, rec.rowCount * LA * k, width: nil)
        }
        if let c = logits, let g = rec.logits {
            encodeLayers(g.bytes, rows: rec.rowCount, per: E * g.dtype.size)
            try put(c, rec.rowCount * LA * E, width: nil)
        }
        if let c = logprobs {
            buffer.removeAll(keepingCapacity: true)
            var w = ByteWriter(capacity: rec.logprobs.count * 8)
            for v in rec.logprobs {
                switch c.dtype {
                case "f8": w.f64(Double(v))
                case "f2": w.u16(Float16(v).bitPattern)
                default: w.u32(v.bitPattern)
                }
            }
            buffer = w.bytes
            try put(c, rec.logprobs.count, width: nil)
        }
    }

    /// Writes `count` elements from `buffer` for column `c`: straight to the archive padded to
    /// `width`, or to its spool.
    private func put(_ c: Column, _ count: Int, width: Int?) throws(TraceError) {
        precondition(buffer.count == count * c.itemSize)
        c.counts.append(count)
        if let spool = c.spool {
            try withBytes(buffer) { raw throws(TraceError) in try spool.write(raw) }
        } else {
            try withBytes(buffer) { raw throws(TraceError) in try target.write(raw) }
            try writePadding(c, (width ?? count) - count)
        }
    }

    /// Writes `n` padding elements of `c`.
    private func writePadding(_ c: Column, _ n: Int) throws(TraceError) {
        guard n > 0 else { return }
        let chunk = max(1, (1 << 16) / c.itemSize)
        if padding.count != chunk * c.itemSize || !padding.starts(with: c.pad) {
            padding = Array([[UInt8]](repeating: c.pad, count: chunk).joined())
        }
        var left = n
        while left > 0 {
            let m = min(left, chunk)
            try withBytes(padding) { raw throws(TraceError) in try target.write(UnsafeRawBufferPointer(rebasing: raw[0..<(m * c.itemSize)])) }
            left -= m
        }
    }

    /// Appends one little-endian integer of `size` bytes to `buffer`.
    @inline(__always) private func appendInt(_ v: Int64, _ size: Int) {
        withUnsafeBytes(of: v.littleEndian) { buffer.append(contentsOf: $0.prefix(size)) }
    }

    /// The record's ids on the layer axis in `buffer` (-1 for missing and for dense layers).
    private func encodeIDs(_ rec: TraceRecord) {
        let size = ids.itemSize, n = rec.rowCount * LA * k
        let map = fullAxis ? h.model.layerMap : nil
        let (rows, L, LA, k) = (rec.rowCount, self.L, self.LA, self.k)
        // Uninitialised: every byte is written below (the dense layers first, when there are any).
        buffer = [UInt8](unsafeUninitializedCapacity: n * size) { out, count in
            count = n * size
            let raw = UnsafeMutableRawBufferPointer(out)
            if map != nil { raw.initializeMemory(as: UInt8.self, repeating: 0xFF) }
            rec.expertIDs.withUnsafeBufferPointer { src in
                switch size {
                case 1: storeIDs(src, raw, UInt8.self, rows: rows, L: L, LA: LA, k: k, map: map)
                case 2: storeIDs(src, raw, UInt16.self, rows: rows, L: L, LA: LA, k: k, map: map)
                case 4: storeIDs(src, raw, UInt32.self, rows: rows, L: L, LA: LA, k: k, map: map)
                default: storeIDs(src, raw, UInt64.self, rows: rows, L: L, LA: LA, k: k, map: map)
                }
            }
        }
    }

    /// A float column's bytes on the layer axis in `buffer` (zeros for dense layers).
    private func encodeLayers(_ src: [UInt8], rows: Int, per: Int) {
        buffer.removeAll(keepingCapacity: true)
        if !fullAxis {
            buffer.append(contentsOf: src)
            return
        }
        buffer.append(contentsOf: repeatElement(0, count: rows * LA * per))
        let map = h.model.layerMap
        for r in 0..<rows {
            for li in 0..<L { wCopy(src, (r * L + li) * per, &buffer, (r * LA + map[li]) * per, per) }
        }
    }

    /// Writes the spooled arrays and the per-sequence ones, and the archive's directory (the sink
    /// stays open).
    public func finish() throws(TraceError) {
        let S = rowCounts.count, R = rowCounts.max() ?? 0
        if let layout {
            guard S == layout.sequences else { throw TraceError(.corrupt, "\(S) records read, the index lists \(layout.sequences)") }
            try target.end()
        } else {
            try copy(ids, NpyHeader(dtype: ids.dtype, shape: idShape(S, R)), width: R * LA * k)
        }
        let attr = h.attributes, p = NpzConversion.attrPrefix
        if anyTokens || attr[p + "tokens.dtype"] != nil {
            let T = tokens.counts.max() ?? 0
            try copy(tokens, NpyHeader(dtype: tokens.dtype, shape: attr[p + "tokens.layout"] == "single" && S == 1 ? [T] : [S, T]), width: T)
            if Set(tokens.counts).count > 1 { try small("n_tokens", .ints(tokens.counts.map(Int64.init), dtype: "i4", shape: [S])) }
        }
        if let c = weights { try copy(c, NpyHeader(dtype: c.dtype, shape: single && S == 1 ? [R, LA, k] : [S, R, LA, k]), width: R * LA * k) }
        if let c = logits { try copy(c, NpyHeader(dtype: c.dtype, shape: single && S == 1 ? [R, LA, E] : [S, R, LA, E]), width: R * LA * E) }
        if let c = logprobs {
            let N = c.counts.max() ?? 0
            try copy(c, NpyHeader(dtype: c.dtype, shape: attr[p + "logprobs.layout"] == "single" && S == 1 ? [N] : [S, N]), width: N)
            if Set(c.counts).count > 1 { try small("n_logprobs", .ints(c.counts.map(Int64.init), dtype: "i4", shape: [S])) }
        }
        let plType = attr[p + "prompt_len.dtype"] ?? "i4"
        if attr[p + "prompt_len.shape"] == "scalar" && Set(promptLens).count <= 1 {
            try small("prompt_len", .ints([promptLens.first ?? 0], dtype: plType, shape: []))
        } else if attr[p + "prompt_len.shape"] != nil || promptLens.contains(where: { $0 != 0 }) {
            try small("prompt_len", .ints(promptLens, dtype: plType, shape: [S]))
        }
        if rowCounts.contains(where: { $0 != R }) { try small("n_rows", .ints(rowCounts.map(Int64.init), dtype: "i4", shape: [S])) }
        if starts.contains(where: { $0 != 0 }) { try small("start", .ints(starts, dtype: "i4", shape: [S])) }
        if uids.enumerated().contains(where: { $0.element != "\($0.offset)" }) { try small("uids", .strings(uids)) }
        if groups.contains(where: { $0 != nil }) { try small("groups", .strings(groups.map { $0 ?? "" })) }
        if rewards.contains(where: { $0 != nil }) {
            var w = ByteWriter()
            for r in rewards { w.f64(r ?? .nan) }
            try small("rewards", NpyArray(dtype: "f8", shape: [S], data: w.bytes))
        }
        try target.finish()
    }

    /// Writes a spooled column as an array of `header`, each record's elements padded to `width`.
    private func copy(_ c: Column, _ header: NpyHeader, width: Int) throws(TraceError) {
        guard let spool = c.spool else { preconditionFailure("\(c.name) is not spooled") }
        try target.begin(c.name, header)
        var piece = [UInt8](repeating: 0, count: 1 << 20)
        for n in c.counts {
            var left = n * c.itemSize
            while left > 0 {
                let m = min(left, piece.count)
                let got = try withBytes(&piece) { raw throws(TraceError) in try spool.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<m])) }
                guard got == m else { throw TraceError(.io, "the temporary file of \(c.name) ends early") }
                try withBytes(piece) { raw throws(TraceError) in try target.write(UnsafeRawBufferPointer(rebasing: raw[0..<m])) }
                left -= m
            }
            try writePadding(c, width - n)
        }
        try target.end()
    }

    /// Writes a small array held in memory.
    private func small(_ name: String, _ a: NpyArray) throws(TraceError) {
        try target.begin(name, a.header)
        try withBytes(a.data) { raw throws(TraceError) in try target.write(raw) }
        try target.end()
    }
}

/// A record's ids (`rows` × `L` × `k`, ``TraceRecord/missing`` = -1) as little-endian `T` on a layer
/// axis of `LA` layers: MoE layer `li` at `map[li]` when there is a map (the dense layers' bytes are
/// left as they are), else at `li`.
@inline(__always)
private func storeIDs<T: FixedWidthInteger>(_ src: UnsafeBufferPointer<UInt16>, _ out: UnsafeMutableRawBufferPointer, _: T.Type,
                                            rows: Int, L: Int, LA: Int, k: Int, map: [Int]?) {
    let size = MemoryLayout<T>.size
    @inline(__always) func value(_ e: UInt16) -> T { e == TraceRecord.missing ? T(truncatingIfNeeded: -1) : T(truncatingIfNeeded: e) }
    guard let map else {
        for i in 0..<(rows * L * k) { out.storeBytes(of: value(src[i]).littleEndian, toByteOffset: i * size, as: T.self) }
        return
    }
    for r in 0..<rows {
        for li in 0..<L {
            let d = (r * LA + map[li]) * k, s = (r * L + li) * k
            for j in 0..<k { out.storeBytes(of: value(src[s + j]).littleEndian, toByteOffset: (d + j) * size, as: T.self) }
        }
    }
}

/// Stores the low `size` bytes of `v`, little-endian, at `offset` of `b`.
@inline(__always) func storeInt(_ v: Int64, _ b: inout [UInt8], _ offset: Int, _ size: Int) {
    for i in 0..<size { b[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) }
}

/// Bytes written in order and read back in order (a temporary file, or memory).
protocol ByteSpool: AnyObject {
    func write(_ bytes: UnsafeRawBufferPointer) throws(TraceError)
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(TraceError) -> Int
}

extension TempFile: ByteSpool {}

/// A spool in memory (for ``NpzConversion/makeArrays(header:records:)``).
final class MemorySpool: ByteSpool {
    private var bytes: [UInt8] = []
    private var position = 0

    func write(_ b: UnsafeRawBufferPointer) throws(TraceError) { bytes.append(contentsOf: b) }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(TraceError) -> Int {
        let n = min(buffer.count, bytes.count - position)
        if n > 0 { bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + position, byteCount: n) } }
        position += n
        return n
    }
}

/// Where exported arrays go, one after another: each begun with its header, then its data.
protocol NpyArrayTarget: AnyObject {
    func begin(_ name: String, _ header: NpyHeader) throws(TraceError)
    func write(_ bytes: UnsafeRawBufferPointer) throws(TraceError)
    func end() throws(TraceError)
    func finish() throws(TraceError)
}

/// Arrays as the `.npy` members of a zip.
final class ZipArrayTarget: NpyArrayTarget {
    let zip: ZipWriter
    let compress: Bool

    init(_ zip: ZipWriter, compress: Bool) {
        self.zip = zip
        self.compress = compress
    }

    func begin(_ name: String, _ header: NpyHeader) throws(TraceError) {
        let h = header.encoded()
        try zip.begin(name + ".npy", size: h.count + header.dataSize, compress: compress)
        try zip.write(h)
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws(TraceError) { try zip.write(bytes) }
    func end() throws(TraceError) { try zip.end() }
    func finish() throws(TraceError) { try zip.finish() }
}

/// Arrays collected in memory.
final class MemoryArrayTarget: NpyArrayTarget {
    private(set) var arrays: [(String, NpyArray)] = []

    func begin(_ name: String, _ header: NpyHeader) throws(TraceError) {
        arrays.append((name, NpyArray(dtype: header.dtype, shape: header.shape, data: [])))
        arrays[arrays.count - 1].1.data.reserveCapacity(header.dataSize)
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws(TraceError) { arrays[arrays.count - 1].1.data.append(contentsOf: bytes) }
    func end() throws(TraceError) {}
    func finish() throws(TraceError) {}
}
