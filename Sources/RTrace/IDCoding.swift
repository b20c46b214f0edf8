import CRTraceSIMD

/// The ordered-reuse coding of expert ids (spec/format.md §6.2): each slot either names the slot
/// of the same expert in the previous present row of the piece, or escapes to a new id.
enum IDCoding {
    static let newMarker: UInt8 = 0xFF

    /// Encodes the present (layer, row)s of `pieces`, layer-major. Returns (ID_SLOTS, ID_NEW).
    static func encode(
        pieces: [Piece], records: [TraceRecord], layers L: Int, topK k: Int, numExperts E: Int, width: IDWidth
    ) -> ([UInt8], [UInt8]) {
        var slots: [UInt8] = []
        var fresh: [UInt8] = []
        let totalRows = pieces.reduce(0) { $0 + $1.rowCount }
        slots.reserveCapacity(totalRows * L * k)
        fresh.reserveCapacity(totalRows * L * k * width.size / 2)
        // slotOf[e] = the smallest slot of expert e in the previous present row, 0xFF if absent.
        // Ids above the model's experts (invalid, but storable) fall back to a linear search.
        var slotOf = [UInt8](repeating: newMarker, count: max(E, 1))
        for l in 0..<L {
            for (p, rec) in zip(pieces, records) {
                rec.expertIDs.withUnsafeBufferPointer { ids in
                    var prev = -1
                    for r in p.rowOffset..<(p.rowOffset + p.rowCount) {
                        let b = (r * L + l) * k
                        if ids[b] == TraceRecord.missing { continue }
                        for j in 0..<k {
                            let e = ids[b + j]
                            var m = newMarker
                            if prev >= 0 {
                                if Int(e) < E {
                                    m = slotOf[Int(e)]
                                } else {
                                    for q in 0..<k where ids[prev + q] == e { m = UInt8(q); break }
                                }
                            }
                            slots.append(m)
                            if m == newMarker {
                                if width == .u8 { fresh.append(UInt8(truncatingIfNeeded: e)) } else {
                                    fresh.append(UInt8(truncatingIfNeeded: e)); fresh.append(UInt8(truncatingIfNeeded: e >> 8))
                                }
                            }
                        }
                        if prev >= 0 {
                            for q in 0..<k where Int(ids[prev + q]) < E { slotOf[Int(ids[prev + q])] = newMarker }
                        }
                        for q in stride(from: k - 1, through: 0, by: -1) where Int(ids[b + q]) < E {
                            slotOf[Int(ids[b + q])] = UInt8(q)
                        }
                        prev = b
                    }
                    if prev >= 0 {
                        for q in 0..<k where Int(ids[prev + q]) < E { slotOf[Int(ids[prev + q])] = newMarker }
                    }
                }
            }
        }
        return (slots, fresh)
    }
}

/// Where each layer's run starts in a layer-major column (spec/format.md §6.1): layer l's present
/// rows follow those of layers 0..<l.
struct LayerStarts {
    /// Present (row, layer)s before layer l, for l in 0...L (the last entry is the total).
    var presentBefore: [Int]
    /// New-id codes in ID_SLOTS before layer l, for l in 0...L (the last entry is ID_NEW's count).
    var newBefore: [Int]

    /// Counts from the MISSING bitmap and, for the new codes, the ID_SLOTS column (whose length
    /// the caller has checked against `presentBefore[L] * topK`).
    init(missing: [UInt8]?, layers L: Int, chunkRows R: Int, slots: [UInt8], topK k: Int) {
        presentBefore = [Int](repeating: 0, count: L + 1)
        newBefore = [Int](repeating: 0, count: L + 1)
        for l in 0..<L {
            var absent = 0
            if let missing {
                for bit in (l * R)..<((l + 1) * R) where missing[bit >> 3] & (1 << UInt8(bit & 7)) != 0 { absent += 1 }
            }
            presentBefore[l + 1] = presentBefore[l] + R - absent
        }
        precondition(slots.count == presentBefore[L] * k)
        slots.withUnsafeBufferPointer { sp in
            for l in 0..<L {
                let n = Self.count(IDCoding.newMarker, in: sp, from: presentBefore[l] * k, to: presentBefore[l + 1] * k)
                newBefore[l + 1] = newBefore[l] + n
            }
        }
    }
}

extension LayerStarts {
    /// How many bytes of `p[a..<z]` equal `value`, sixteen at a time.
    static func count(_ value: UInt8, in p: UnsafeBufferPointer<UInt8>, from a: Int, to z: Int) -> Int {
        guard a < z, let base = p.baseAddress.map(UnsafeRawPointer.init) else { return 0 }
        var i = a, n = 0
        let target = SIMD16<UInt8>(repeating: value), one = SIMD16<UInt8>(repeating: 1), zero = SIMD16<UInt8>()
        while i &+ 16 <= z {
            // At most 255 blocks per accumulator, so no lane overflows.
            var acc = zero
            let end = min(z, i &+ 16 &* 255)
            while i &+ 16 <= end {
                let v = base.loadUnaligned(fromByteOffset: i, as: SIMD16<UInt8>.self)
                acc &+= zero.replacing(with: one, where: v .== target)
                i &+= 16
            }
            n &+= Int(SIMD16<UInt16>(truncatingIfNeeded: acc).wrappedSum())
        }
        while i < z {
            if p[i] == value { n &+= 1 }
            i &+= 1
        }
        return n
    }
}

extension IDCoding {
    /// Whether ``decode`` can use the SIMD kernel (`rtrace_decode_ids`, for top_k ≤ 8) on this CPU.
    static let simdSupported = rtrace_ids_simd_supported()

    /// Decodes ID_SLOTS and ID_NEW into the pieces' row-major ids. Returns an error message, or nil.
    ///
    /// The caller has checked the column lengths: `slots` holds `k` codes per present (layer, row) and
    /// `fresh` one id per new-marker code (plus two bytes of padding, read but never used by the
    /// scalar code). The columns are layer-major and the output row-major, so the loop keeps one read
    /// cursor per layer and walks blocks of rows (``decodePiece``, or the C kernel `rtrace_decode_ids`
    /// for top_k ≤ 8 when `simd`; a piece where the kernel finds a bad code is decoded again by
    /// ``decodePiece``, whose error message is the one returned).
    ///
    /// With `checkExperts`, also sets each piece's ``DecodedPiece/idCheck`` to what
    /// ``TraceChecker/idCheck(_:rows:L:k:E:)`` finds with that number of experts (the kernel checks the
    /// rows while it decodes them, and leaves a piece it flags to `idCheck`).
    static func decode(
        slots: [UInt8], fresh: [UInt8], width: IDWidth, missing: [UInt8]?, pieces: inout [DecodedPiece],
        layers L: Int, topK k: Int, chunkRows R: Int, starts: LayerStarts, checkExperts: Int? = nil,
        simd: Bool = IDCoding.simdSupported
    ) -> String? {
        let w = width.size
        precondition(slots.count == starts.presentBefore[L] * k && fresh.count == starts.newBefore[L] * w + 2)
        // Per layer: the next ID_SLOTS code, the next ID_NEW byte, the previous present row's base (-1: none).
        var cursors = Cursors(
            slot: (0..<L).map { starts.presentBefore[$0] * k }, fresh: (0..<L).map { starts.newBefore[$0] * w },
            prev: [Int](repeating: -1, count: L))
        var r0 = 0
        for i in pieces.indices {
            let n = pieces[i].piece.rowCount
            for l in 0..<L { cursors.prev[l] = -1 }
            var decoded = false
            var kernelCheck: IDCheck? = nil  // the kernel's check of a piece it did not flag
            if simd && k <= Int(RTRACE_SIMD_MAX_TOP_K) {
                let saved = cursors
                let (status, check, flagged) = decodeSIMD(
                    slots, fresh, &pieces[i].ids, &cursors, experts: checkExperts, rows: n, firstChunkRow: r0,
                    missing: missing, layers: L, topK: k, chunkRows: R, wide: w == 2)
                decoded = status == 0
                if decoded && !flagged { kernelCheck = check }
                if !decoded { cursors = saved }  // a bad code (1) or no kernel (-1): the scalar code decodes the piece
            }
            if !decoded {
                let err = slots.withUnsafeBufferPointer { sp in
                    fresh.withUnsafeBufferPointer { fp in
                        pieces[i].ids.withUnsafeMutableBufferPointer { ids in
                            decodePiece(sp, fp, ids, &cursors, rows: n, firstChunkRow: r0, missing: missing,
                                        layers: L, topK: k, chunkRows: R, wide: w == 2)
                        }
                    }
                }
                if let err { return err }
            }
            if let E = checkExperts {
                pieces[i].idCheck = kernelCheck ?? pieces[i].ids.withUnsafeBufferPointer {
                    TraceChecker.idCheck($0, rows: n, L: L, k: k, E: E)
                }
            }
            r0 += n
        }
        return nil
    }

    /// One piece through `rtrace_decode_ids` (see ``decode``). Returns the kernel's status (0 when
    /// decoded) and, with `experts`, the check's layer ORs and presence and whether the kernel flagged
    /// the piece.
    private static func decodeSIMD(
        _ slots: [UInt8], _ fresh: [UInt8], _ ids: inout [UInt16], _ c: inout Cursors, experts: Int?,
        rows n: Int, firstChunkRow r0: Int, missing: [UInt8]?, layers L: Int, topK k: Int, chunkRows R: Int, wide: Bool
    ) -> (status: Int32, check: IDCheck?, flagged: Bool) {
        var or = [UInt16](repeating: 0, count: experts == nil ? 0 : L)
        var present = [Bool](repeating: false, count: experts == nil ? 0 : L)
        var flagged = false
        let status = slots.withUnsafeBufferPointer { sp in
            fresh.withUnsafeBufferPointer { fp in
                ids.withUnsafeMutableBufferPointer { ip in
                    c.slot.withUnsafeMutableBufferPointer { cs in
                        c.fresh.withUnsafeMutableBufferPointer { cf in
                            c.prev.withUnsafeMutableBufferPointer { cp in
                                or.withUnsafeMutableBufferPointer { op in
                                    present.withUnsafeMutableBufferPointer { pp in
                                        var chk = rtrace_id_check(
                                            layer_or: op.baseAddress, layer_present: pp.baseAddress,
                                            num_experts: experts ?? 0, flagged: false)
                                        let status = withUnsafeMutablePointer(to: &chk) { chkp in
                                            withOptionalPointer(missing) { mp in
                                                rtrace_decode_ids(
                                                    sp.baseAddress, sp.count, fp.baseAddress, fp.count, ip.baseAddress,
                                                    cs.baseAddress, cf.baseAddress, cp.baseAddress, n, r0, mp, L, k, R,
                                                    wide, experts == nil ? nil : chkp)
                                            }
                                        }
                                        flagged = chk.flagged
                                        return status
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let check = experts.map { _ in IDCheck(clean: true, layerOr: or, layerPresent: present) }
        return (status, check, flagged)
    }

    private static func withOptionalPointer<R>(_ a: [UInt8]?, _ body: (UnsafePointer<UInt8>?) -> R) -> R {
        guard let a else { return body(nil) }
        return a.withUnsafeBufferPointer { body($0.baseAddress) }
    }

    /// Where each layer's decoding stands, carried from piece to piece.
    struct Cursors {
        var slot: [Int]
        var fresh: [Int]
        var prev: [Int]
    }

    /// Decodes one piece's `rows` rows into `ids` (row-major), advancing the per-layer cursors.
    ///
    /// Blocks of 32 rows × groups of 8 layers: each layer's codes are read in short sequential runs,
    /// the block's output stays in L1, and consecutive steps belong to different layers, so the
    /// row-to-row dependency of reused ids does not serialise the loop.
    private static func decodePiece(
        _ sp: UnsafeBufferPointer<UInt8>, _ fp: UnsafeBufferPointer<UInt8>, _ ids: UnsafeMutableBufferPointer<UInt16>,
        _ c: inout Cursors, rows n: Int, firstChunkRow r0: Int, missing: [UInt8]?,
        layers L: Int, topK k: Int, chunkRows R: Int, wide: Bool
    ) -> String? {
        let w = wide ? 2 : 1, shift = wide ? 1 : 0
        for blockStart in stride(from: 0, to: n, by: 32) {
            let blockEnd = min(n, blockStart &+ 32)
            for groupStart in stride(from: 0, to: L, by: 8) {
                let groupEnd = min(L, groupStart &+ 8)
                for r in blockStart..<blockEnd {
                    for l in groupStart..<groupEnd {
                        if let missing {
                            let bit = l * R + r0 + r
                            if missing[bit >> 3] & (1 << UInt8(bit & 7)) != 0 { continue }
                        }
                        let b = (r &* L &+ l) &* k
                        var s = c.slot[l], f = c.fresh[l]
                        let p = c.prev[l]
                        if p >= 0 {
                            // Integer arithmetic instead of conditions, so that the compiler emits no
                            // branch on the unpredictable codes. The ID_NEW position of slot j is f plus
                            // the new codes before it: no chain of dependent loads through f.
                            var bad = 0, count = 0
                            for j in 0..<k {
                                let m = Int(sp[s &+ j])
                                let isNew = (m &+ 1) >> 8  // 1 for the new marker 0xFF, else 0
                                let select = UInt16(truncatingIfNeeded: 0 &- isNew)
                                let reused = ids[p &+ min(m, k &- 1)]
                                let q = f &+ (count << shift)
                                let fresh = wide ? UInt16(fp[q]) | UInt16(fp[q &+ 1]) << 8 : UInt16(fp[q])
                                ids[b &+ j] = (fresh & select) | (reused & ~select)
                                count &+= isNew
                                bad |= ((k &- 1 &- m) >> 63) & (1 &- isNew)  // a reuse code ≥ top_k
                            }
                            s &+= k
                            f &+= count << shift
                            if bad != 0 {
                                let m = (0..<k).map { sp[s - k + $0] }.first { $0 != newMarker && Int($0) >= k }!
                                return "slot code \(m) at layer \(l), chunk row \(r0 + r) is not below top_k \(k)"
                            }
                        } else {
                            for j in 0..<k {
                                let m = sp[s]
                                s &+= 1
                                guard m == newMarker else {
                                    return "slot code \(m) at layer \(l), chunk row \(r0 + r) refers to a previous row the piece does not have"
                                }
                                ids[b + j] = wide ? UInt16(fp[f]) | UInt16(fp[f + 1]) << 8 : UInt16(fp[f])
                                f &+= w
                            }
                        }
                        c.slot[l] = s
                        c.fresh[l] = f
                        c.prev[l] = b
                    }
                }
            }
        }
        return nil
    }
}
