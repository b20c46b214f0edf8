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

extension IDCoding {
    /// Decodes ID_SLOTS and ID_NEW into the pieces' row-major ids. Returns an error message, or nil.
    static func decode(
        slots: [UInt8], fresh: [UInt8], width: IDWidth, missing: [UInt8]?, pieces: inout [DecodedPiece],
        layers L: Int, topK k: Int, chunkRows R: Int
    ) -> String? {
        var s = 0, f = 0
        for l in 0..<L {
            var r0 = 0
            for i in pieces.indices {
                let n = pieces[i].piece.rowCount
                let err: String? = pieces[i].ids.withUnsafeMutableBufferPointer { ids in
                    var prev = -1
                    for r in 0..<n {
                        if let missing {
                            let bit = l * R + r0 + r
                            if missing[bit >> 3] & (1 << UInt8(bit & 7)) != 0 { continue }
                        }
                        let b = (r * L + l) * k
                        for j in 0..<k {
                            let m = slots[s]
                            s += 1
                            if m == newMarker {
                                if width == .u8 {
                                    ids[b + j] = UInt16(fresh[f]); f += 1
                                } else {
                                    ids[b + j] = UInt16(fresh[f]) | UInt16(fresh[f + 1]) << 8; f += 2
                                }
                            } else {
                                guard Int(m) < k else { return "slot code \(m) at layer \(l), chunk row \(r0 + r) is not below top_k \(k)" }
                                guard prev >= 0 else { return "slot code \(m) at layer \(l), chunk row \(r0 + r) refers to a previous row the piece does not have" }
                                ids[b + j] = ids[prev + Int(m)]
                            }
                        }
                        prev = b
                    }
                    return nil
                }
                if let err { return err }
                r0 += n
            }
        }
        return nil
    }
}
