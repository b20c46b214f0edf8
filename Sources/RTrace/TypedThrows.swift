/// Array's `withUnsafeBytes` and `withUnsafeMutableBytes` rethrow `any Error`; these keep a
/// `TraceError` typed (and avoid a typed-throws closure passed to a rethrowing API, which crashes
/// swift-frontend 6.3.1 at -Onone).

/// `body` over the bytes of `array`.
@inline(__always)
func withBytes<R>(_ array: [UInt8], _ body: (UnsafeRawBufferPointer) throws(TraceError) -> R) throws(TraceError) -> R {
    var result: R? = nil
    var failure: TraceError? = nil
    array.withUnsafeBytes { raw in
        do throws(TraceError) { result = try body(raw) } catch { failure = error }
    }
    if let failure { throw failure }
    return result!
}

/// `body` over the bytes of `array`, writable.
@inline(__always)
func withBytes<R>(_ array: inout [UInt8], _ body: (UnsafeMutableRawBufferPointer) throws(TraceError) -> R) throws(TraceError) -> R {
    var result: R? = nil
    var failure: TraceError? = nil
    array.withUnsafeMutableBytes { raw in
        do throws(TraceError) { result = try body(raw) } catch { failure = error }
    }
    if let failure { throw failure }
    return result!
}
