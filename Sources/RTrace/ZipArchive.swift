/// One member of a zip archive, as its central directory describes it (ZIP64 fields resolved).
public struct ZipEntry: Sendable, Equatable {
    /// The member's path in the archive.
    public var name: String
    /// 0 = stored, 8 = deflated (the only methods read).
    public var method: UInt16
    /// General-purpose flags (bit 0: encrypted, bit 3: sizes in a data descriptor).
    public var flags: UInt16
    public var crc32: UInt32
    public var compressedSize: Int
    public var uncompressedSize: Int
    /// Offset of the member's local header in the archive.
    public var localHeaderOffset: Int
    /// Offset of the member's central directory entry (for errors).
    public var directoryOffset: Int
}

/// A zip archive read through its central directory, including ZIP64 (members and archives over
/// 4 GiB, as numpy writes them): the members and where their data starts. Member data is read with
/// ``ZipMemberReader``, one independent cursor per member.
///
/// The archive must be a regular file (positioned reads); `Npz` spools standard input to a
/// temporary file first.
final class ZipArchive {
    /// The archive file.
    let source: InputSource
    /// The members in directory order.
    let entries: [ZipEntry]

    /// Central directories larger than this are refused (an npz has a few members; 64 MiB is ~1M).
    static let maxDirectoryBytes = 64 << 20

    /// Reads the end records and the central directory of `source` (a regular file).
    init(source: InputSource) throws(TraceError) {
        self.source = source
        guard let size = source.size else { throw TraceError(.io, "a zip archive needs a regular file (positioned reads)", file: source.name) }
        func bad(_ kind: TraceError.Kind, _ m: String, _ at: Int?) -> TraceError { TraceError(kind, m, file: source.name, offset: at) }
        // The end of central directory record: 22 bytes and a comment of up to 65535 at the very end.
        let tailStart = max(0, size - 22 - 65_535)
        let tail = try source.read(at: tailStart, count: size - tailStart)
        var eocd = -1
        var i = tail.count - 22
        while i >= 0 {
            if tail[i] == 0x50, tail[i + 1] == 0x4B, tail[i + 2] == 0x05, tail[i + 3] == 0x06,
                i + 22 + Int(loadU16(tail, i + 20)) <= tail.count {
                eocd = i
                break
            }
            i -= 1
        }
        guard eocd >= 0 else {
            let head = try source.read(at: 0, count: 4)
            if head == [0x50, 0x4B, 0x03, 0x04] {
                throw bad(.truncated, "zip archive has no end of central directory record: truncated, or still being written", size)
            }
            throw bad(.invalidInput, "not an .npz (zip) archive: no end of central directory record", nil)
        }
        let eocdOffset = tailStart + eocd
        let disk = loadU16(tail, eocd + 4), cdDisk = loadU16(tail, eocd + 6)
        var count = Int(loadU16(tail, eocd + 10))
        var cdSize = Int(loadU32(tail, eocd + 12)), cdOffset = Int(loadU32(tail, eocd + 16))
        var multiDisk = disk != 0 || cdDisk != 0
        if count == 0xFFFF || cdSize == 0xFFFF_FFFF || cdOffset == 0xFFFF_FFFF || (eocdOffset >= 20 && Self.hasZip64Locator(tail, eocd)) {
            // ZIP64: a locator just before the end record points at the ZIP64 end record.
            guard eocdOffset >= 20, Self.hasZip64Locator(tail, eocd) else {
                throw bad(.corrupt, "end of central directory has ZIP64 markers but no ZIP64 locator before it", eocdOffset)
            }
            let loc = eocd - 20
            let recordOffset = Int(clamping: loadU64(tail, loc + 8))
            multiDisk = multiDisk || loadU32(tail, loc + 4) != 0 || loadU32(tail, loc + 16) > 1
            guard recordOffset >= 0, recordOffset + 56 <= eocdOffset - 20 else {
                throw bad(.corrupt, "ZIP64 locator points at \(recordOffset), outside the archive", eocdOffset - 20)
            }
            let r = try source.read(at: recordOffset, count: 56)
            guard r.count == 56, loadU32(r, 0) == 0x0606_4B50 else {
                throw bad(.corrupt, "no ZIP64 end of central directory record at the offset its locator gives", recordOffset)
            }
            multiDisk = multiDisk || loadU32(r, 16) != 0 || loadU32(r, 20) != 0
            count = Int(clamping: loadU64(r, 32))
            cdSize = Int(clamping: loadU64(r, 40))
            cdOffset = Int(clamping: loadU64(r, 48))
        }
        if multiDisk { throw bad(.invalidInput, "multi-disk (split) zip archives are not supported", eocdOffset) }
        guard cdSize <= Self.maxDirectoryBytes else {
            throw bad(.limit, "central directory is \(cdSize) bytes, more than \(Self.maxDirectoryBytes)", eocdOffset)
        }
        guard cdOffset >= 0, cdOffset + cdSize <= eocdOffset, count <= cdSize / 46 + 1 else {
            throw bad(.corrupt, "central directory (\(count) entries, \(cdSize) bytes at \(cdOffset)) does not fit before its end record at \(eocdOffset)", eocdOffset)
        }
        let cd = try source.read(at: cdOffset, count: cdSize)
        var entries: [ZipEntry] = []
        entries.reserveCapacity(count)
        var p = 0
        for n in 0..<count {
            let at = cdOffset + p
            guard p + 46 <= cd.count, loadU32(cd, p) == 0x0201_4B50 else {
                throw bad(.corrupt, "central directory entry \(n) of \(count) is missing or damaged", at)
            }
            let nameLen = Int(loadU16(cd, p + 28)), extraLen = Int(loadU16(cd, p + 30)), commentLen = Int(loadU16(cd, p + 32))
            guard p + 46 + nameLen + extraLen + commentLen <= cd.count else {
                throw bad(.corrupt, "central directory entry \(n) runs past the directory's end", at)
            }
            let name = String(decoding: cd[(p + 46)..<(p + 46 + nameLen)], as: UTF8.self)
            var e = ZipEntry(name: name, method: loadU16(cd, p + 10), flags: loadU16(cd, p + 8), crc32: loadU32(cd, p + 16),
                             compressedSize: Int(loadU32(cd, p + 20)), uncompressedSize: Int(loadU32(cd, p + 24)),
                             localHeaderOffset: Int(loadU32(cd, p + 42)), directoryOffset: at)
            // ZIP64 extra field (0x0001): 8-byte values for the fields saturated at 0xFFFFFFFF, in this order.
            let needU = e.uncompressedSize == 0xFFFF_FFFF, needC = e.compressedSize == 0xFFFF_FFFF, needO = e.localHeaderOffset == 0xFFFF_FFFF
            if needU || needC || needO {
                guard var z = Self.extraField(0x0001, in: Array(cd[(p + 46 + nameLen)..<(p + 46 + nameLen + extraLen)])) else {
                    throw bad(.corrupt, "member \(name): sizes are saturated (0xFFFFFFFF) but there is no ZIP64 extra field", at)
                }
                func next(_ what: String) throws(TraceError) -> Int {
                    guard z.count >= 8 else { throw bad(.corrupt, "member \(name): the ZIP64 extra field lacks the \(what)", at) }
                    defer { z.removeFirst(8) }
                    return Int(clamping: loadU64(z, 0))
                }
                if needU { e.uncompressedSize = try next("uncompressed size") }
                if needC { e.compressedSize = try next("compressed size") }
                if needO { e.localHeaderOffset = try next("local header offset") }
            }
            guard e.localHeaderOffset + 30 <= cdOffset, e.compressedSize >= 0, e.uncompressedSize >= 0 else {
                throw bad(.corrupt, "member \(name): local header at \(e.localHeaderOffset) lies outside the members' area (before \(cdOffset))", at)
            }
            entries.append(e)
            p += 46 + nameLen + extraLen + commentLen
        }
        self.entries = entries
    }

    /// Whether a ZIP64 end of central directory locator sits just before the end record at `eocd` of `tail`.
    private static func hasZip64Locator(_ tail: [UInt8], _ eocd: Int) -> Bool {
        eocd >= 20 && loadU32(tail, eocd - 20) == 0x0706_4B50
    }

    /// The data of extra field `id` in a zip extra block, nil if absent.
    static func extraField(_ id: UInt16, in extra: [UInt8]) -> [UInt8]? {
        var i = 0
        while i + 4 <= extra.count {
            let tag = loadU16(extra, i), n = Int(loadU16(extra, i + 2))
            guard i + 4 + n <= extra.count else { return nil }
            if tag == id { return Array(extra[(i + 4)..<(i + 4 + n)]) }
            i += 4 + n
        }
        return nil
    }

    /// Where `entry`'s data starts, from its local header (whose name and extra lengths may differ
    /// from the directory's); checks that the data lies inside the archive.
    func dataOffset(of entry: ZipEntry) throws(TraceError) -> Int {
        let at = entry.localHeaderOffset
        let h = try source.read(at: at, count: 30)
        guard h.count == 30, loadU32(h, 0) == 0x0403_4B50 else {
            throw TraceError(.corrupt, "member \(entry.name): no local header at the offset the central directory gives", file: source.name, offset: at)
        }
        let start = at + 30 + Int(loadU16(h, 26)) + Int(loadU16(h, 28))
        guard start + entry.compressedSize <= (source.size ?? 0) else {
            throw TraceError(.truncated, "member \(entry.name): \(entry.compressedSize) bytes of data at \(start) run past the archive's end", file: source.name, offset: start)
        }
        return start
    }
}
