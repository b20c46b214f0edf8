import Foundation
import RTrace

/// Expands trace arguments: a directory stands for every `*.rtrace` file inside it (sorted by name).
public func expandTracePaths(_ args: [String]) throws(TraceError) -> [String] {
    var out: [String] = []
    for a in args {
        var isDir: ObjCBool = false
        if a != "-", FileManager.default.fileExists(atPath: a, isDirectory: &isDir), isDir.boolValue {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: a)) ?? []
            let files = names.filter { $0.hasSuffix(".rtrace") }.sorted().map { (a as NSString).appendingPathComponent($0) }
            if files.isEmpty { throw TraceError(.invalidInput, "directory \(a) holds no *.rtrace files") }
            out += files
        } else {
            out.append(a)
        }
    }
    return out
}

/// Checks that two geometries agree on everything the analyses index by; names the first difference.
func checkSameGeometry(_ a: ModelGeometry, _ b: ModelGeometry, _ an: String, _ bn: String) throws(TraceError) {
    func bad(_ what: String) -> TraceError {
        TraceError(.geometryMismatch, "\(an) and \(bn) disagree on \(what): traces of different models cannot be compared")
    }
    if a.numLayers != b.numLayers { throw bad("num_layers (\(a.numLayers) vs \(b.numLayers))") }
    if a.numExperts != b.numExperts { throw bad("num_experts (\(a.numExperts) vs \(b.numExperts))") }
    if a.topK != b.topK { throw bad("top_k (\(a.topK) vs \(b.topK))") }
    if a.layerMap != b.layerMap { throw bad("layer_map (\(a.layerMap) vs \(b.layerMap))") }
}

/// Opens every file and checks they share one geometry. Returns the readers (headers already read).
func openAll(_ paths: [String]) throws(TraceError) -> [TraceReader] {
    if paths.isEmpty { throw TraceError(.invalidInput, "no trace files given") }
    var rs: [TraceReader] = []
    for p in paths {
        let r = try TraceReader(path: p)
        if let f = rs.first { try checkSameGeometry(f.header.model, r.header.model, paths[0], p) }
        rs.append(r)
    }
    return rs
}

/// A bounded queue filled by a reader thread. A taken item's slot is emptied at once, so the queue
/// holds at most `capacity` items however large they are, and, when items have a weight (bytes),
/// at most `maxWeight` of it (or one item, however heavy).
final class BoundedChannel<Element>: @unchecked Sendable {
    private let cond = NSCondition()
    private var items: [Element?] = []
    private var weights: [Int] = []
    private var head = 0
    private var finished = false
    private var failure: (any Error)?
    private let capacity: Int
    private let maxWeight: Int
    private let weigh: ((Element) -> Int)?
    private var weight = 0
    private var waitingPutters = 0, waitingTakers = 0

    init(capacity: Int = 64, maxWeight: Int = .max, weight: ((Element) -> Int)? = nil) {
        self.capacity = capacity
        self.maxWeight = maxWeight
        weigh = weight
    }

    private var cancelled = false

    struct Cancelled: Error {}

    /// Items the queue holds now (queued, not yet taken).
    var held: Int {
        cond.lock()
        defer { cond.unlock() }
        return items.reduce(0) { $0 + ($1 == nil ? 0 : 1) }
    }

    /// Adds an item, waiting while the queue is full; throws once the consumer has gone away.
    func put(_ r: Element) throws {
        let w = weigh?(r) ?? 0
        cond.lock()
        defer { cond.unlock() }
        while (items.count - head >= capacity || (items.count > head && weight + w > maxWeight)) && !cancelled {
            waitingPutters += 1
            cond.wait()
            waitingPutters -= 1
        }
        if cancelled { throw Cancelled() }
        items.append(r)
        weights.append(w)
        weight += w
        // Wake the consumer only when it waits (a signal per item costs a context switch each).
        if waitingTakers > 0 { cond.broadcast() }
    }

    /// Stops the producer (its next put throws) and drops queued items.
    func cancel() {
        cond.lock()
        cancelled = true
        items.removeAll()
        weights.removeAll()
        weight = 0
        head = 0
        cond.broadcast()
        cond.unlock()
    }

    func finish(_ e: (any Error)?) {
        cond.lock()
        finished = true
        failure = e
        cond.broadcast()
        cond.unlock()
    }

    /// The next item, or nil at the end; rethrows the producer's error.
    func take() throws -> Element? {
        cond.lock()
        defer { cond.unlock() }
        while head == items.count && !finished {
            waitingTakers += 1
            cond.wait()
            waitingTakers -= 1
        }
        if head < items.count {
            let r = items[head].take()!
            weight -= weights[head]
            head += 1
            if head > 256 && head * 2 > items.count {
                items.removeFirst(head)
                weights.removeFirst(head)
                head = 0
            }
            // Wake the producer once the queue has room for a few items (or is empty), not per item.
            if waitingPutters > 0 && (items.count - head <= capacity / 2 || weight <= maxWeight / 2) { cond.broadcast() }
            return r
        }
        if let e = failure { throw e }
        return nil
    }
}

/// The queue between a reader thread and diff/stats.
typealias RecordChannel = BoundedChannel<TraceRecord>

/// Runs `produce` on a background thread (8 MiB stack) that fills `channel`, then finishes it with
/// the error `produce` threw, if any.
func startProducer<T>(_ channel: BoundedChannel<T>, _ produce: @escaping () throws -> Void) {
    let body = UncheckedBox(value: produce)
    let t = Thread {
        do {
            try body.value()
            channel.finish(nil)
        } catch {
            channel.finish(error)
        }
    }
    t.stackSize = 8 << 20
    t.start()
}

struct UncheckedBox<T>: @unchecked Sendable { let value: T }

/// Streams the records of several readers, one after another, on a background thread; the queue
/// holds at most `capacity` records and `maxBytes` of them (or one record, however large).
func streamRecords(_ readers: [TraceReader], capacity: Int = 8, maxBytes: Int = 4 << 20) -> RecordChannel {
    let ch = RecordChannel(capacity: capacity, maxWeight: maxBytes) { RecordSpill.memoryBytes($0) }
    let box = UncheckedBox(value: readers)
    startProducer(ch) { for r in box.value { try r.forEachRecord { try ch.put($0) } } }
    return ch
}

/// An exactly associative sum of doubles: fixed point with 2⁻⁶⁰ resolution in 128 bits.
///
/// Partial sums merge exactly in any order, so statistics of shards merge to the statistics of the union.
public struct ExactSum: Sendable, Equatable {
    public static let scale = 0x1p60
    public var raw: Int128 = 0
    public init() {}
    public init(raw: Int128) { self.raw = raw }
    @inline(__always) public mutating func add(_ x: Double) {
        guard x.isFinite else { return }
        raw &+= Int128((x * ExactSum.scale).rounded())
    }
    public static func + (a: ExactSum, b: ExactSum) -> ExactSum { ExactSum(raw: a.raw &+ b.raw) }
    public var value: Double { Double(raw) / ExactSum.scale }
    public var text: String { String(raw) }
    public init?(text: String) {
        guard let r = Int128(text) else { return nil }
        raw = r
    }
}

extension ExactSum: TextCodable {
    public static let textForm = "the decimal text of a 128-bit integer (an exact sum)"
}

/// Formats a double for tables.
func fmt(_ x: Double?, _ digits: Int = 4) -> String {
    guard let x, x.isFinite else { return "-" }
    return String(format: "%.\(digits)f", x)
}

/// Left-aligned first column, right-aligned others.
func table(_ rows: [[String]]) -> String {
    guard let n = rows.first?.count else { return "" }
    var w = [Int](repeating: 0, count: n)
    for r in rows { for (i, c) in r.enumerated() where i < n { w[i] = max(w[i], c.count) } }
    var s = ""
    for r in rows {
        var line = ""
        for (i, c) in r.enumerated() where i < n {
            let pad = String(repeating: " ", count: w[i] - c.count)
            line += i == 0 ? c + pad : "  " + pad + c
        }
        s += line + "\n"
    }
    return s
}

/// Parses `key=value` thresholds.
public func parseThresholds(_ specs: [String]) throws(TraceError) -> [(key: String, limit: Double)] {
    var out: [(String, Double)] = []
    for s in specs {
        let parts = s.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, let v = Double(parts[1]), !parts[0].isEmpty else {
            throw TraceError(.invalidInput, "--fail-above expects KEY=NUMBER (for example flip_rate=0.05), found \(s)")
        }
        out.append((parts[0], v))
    }
    return out
}

/// ``checkThresholds(_:_:)`` over the JSON of a Codable result; the JSON tree is built only when there
/// are limits to check.
public func checkThresholds(_ result: some Encodable, _ limits: [(key: String, limit: Double)]) throws(TraceError) -> [String] {
    limits.isEmpty ? [] : try checkThresholds(jsonTree(result), limits)
}

/// Looks a dotted key (`flip_rate`, `policy.k3`) up in a JSON object and compares it to its limit.
/// Returns the violations as messages; throws when a key does not name a number.
public func checkThresholds(_ json: [String: Any], _ limits: [(key: String, limit: Double)]) throws(TraceError) -> [String] {
    var out: [String] = []
    for (key, limit) in limits {
        var cur: Any? = json
        for part in key.split(separator: ".") { cur = (cur as? [String: Any])?[String(part)] }
        if cur is NSNull { continue }  // undefined (no data for it): nothing exceeded
        guard let n = cur as? NSNumber ?? (cur as? Double).map({ NSNumber(value: $0) }) ?? (cur as? Int).map({ NSNumber(value: $0) }) else {
            let keys = json.filter { $0.value is Double || $0.value is Int }.keys.sorted().joined(separator: ", ")
            throw TraceError(.invalidInput, "--fail-above \(key): not a numeric key of the report (numeric top-level keys: \(keys))")
        }
        if n.doubleValue > limit { out.append("\(key) = \(n.doubleValue) exceeds \(limit)") }
    }
    return out
}
