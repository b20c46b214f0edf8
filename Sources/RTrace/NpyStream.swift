/// One `.npy` array read front to back: the header first, then its elements in C order, a piece
/// at a time, so memory follows the pieces asked for rather than the array.
///
/// The data never runs past what the header declares: reading stops there, and ``finish()``
/// refuses a source that holds more (or whose checksum fails).
final class NpyStream {
    /// The array's name in errors (`topk_ids.npy`, or the file of a plain `.npy`).
    let name: String
    let header: NpyHeader
    /// Bytes of the header (magic to padding).
    let headerLength: Int
    private let source: any ByteSource
    /// Elements read so far.
    private(set) var elementsRead = 0

    /// Header plus data: the size the `.npy` header declares.
    var declaredSize: Int { headerLength + header.dataSize }

    /// Reads the header from `source`. With `expectedSize` (the zip directory's uncompressed size),
    /// a header that declares another size is refused before any data is read.
    init(source: any ByteSource, name: String, expectedSize: Int? = nil) throws(TraceError) {
        self.source = source
        self.name = name
        func fill(_ n: Int, into b: inout [UInt8]) throws(TraceError) {
            let old = b.count
            b += [UInt8](repeating: 0, count: n)
            let got = try withBytes(&b) { raw throws(TraceError) in try source.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[old...])) }
            if got < n {
                b.removeLast(n - got)
                throw TraceError(.invalidInput, "\(name): ends after \(b.count) bytes, inside the .npy header")
            }
        }
        var head: [UInt8] = []
        try fill(10, into: &head)
        if head[0] == 0x93 && head[6] >= 2 { try fill(2, into: &head) }
        let total = try NpyHeader.length(prefix: head, name: name)
        if total > head.count { try fill(total - head.count, into: &head) }
        (header, headerLength) = try NpyHeader.parse(head, name: name)
        if let expectedSize, expectedSize != headerLength + header.dataSize {
            throw TraceError(.corrupt, "\(name): its .npy header declares \(headerLength + header.dataSize) bytes (\(headerLength) of header, shape \(header.shape) of \(header.dtype)), the zip directory \(expectedSize): refused before reading its data")
        }
    }

    /// Streams an array held in memory.
    init(array: NpyArray, name: String) {
        self.name = name
        self.header = array.header
        self.headerLength = 0
        self.source = MemoryByteSource(array.data, what: name)
    }

    /// Elements not read yet.
    var remaining: Int { header.count - elementsRead }

    /// Reads the next `count` elements' bytes into `buffer` (resized to fit).
    ///
    /// - Throws: `invalidInput` when the source ends before them (naming the declared and found sizes).
    func read(_ count: Int, into buffer: inout [UInt8]) throws(TraceError) {
        precondition(count >= 0 && count <= remaining, "\(name): reading \(count) elements, \(remaining) left")
        let n = count * header.itemSize
        if buffer.count != n { buffer = [UInt8](repeating: 0, count: n) }
        let got = try withBytes(&buffer) { raw throws(TraceError) in try source.read(into: raw) }
        if got < n {
            let found = headerLength + elementsRead * header.itemSize + got
            throw TraceError(.invalidInput, "\(name): ends after \(found) bytes; its .npy header declares \(declaredSize) (shape \(header.shape) of \(header.dtype)), so element \(elementsRead + got / max(header.itemSize, 1)) is missing")
        }
        elementsRead += count
    }

    /// Reads past the next `count` elements, a bounded piece at a time.
    func skip(_ count: Int) throws(TraceError) {
        var scratch: [UInt8] = []
        var left = count
        let step = max(1, (1 << 20) / max(header.itemSize, 1))
        while left > 0 {
            let n = min(left, step)
            try read(n, into: &scratch)
            left -= n
        }
    }

    /// Reads every element left and checks the end: for small arrays (per-sequence values).
    func readAll() throws(TraceError) -> NpyArray {
        var data: [UInt8] = []
        try read(remaining, into: &data)
        try finish()
        return NpyArray(dtype: header.dtype, shape: header.shape, data: data)
    }

    /// Reads what is left, then checks that nothing follows the declared data (and the checksum).
    func finish() throws(TraceError) {
        if remaining > 0 { try skip(remaining) }
        try source.finish(declared: declaredSize)
    }
}

