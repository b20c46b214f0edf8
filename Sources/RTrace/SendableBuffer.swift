/// A fixed buffer that concurrent workers fill at distinct indices (each index written by one worker).
final class SendableBuffer<T>: @unchecked Sendable {
    let buffer: UnsafeMutableBufferPointer<T>

    init(count: Int, initial: T) {
        buffer = .allocate(capacity: count)
        buffer.initialize(repeating: initial)
    }

    func free() {
        buffer.deinitialize()
        buffer.deallocate()
    }
}
