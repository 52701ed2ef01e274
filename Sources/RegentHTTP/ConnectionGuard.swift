import HTTPTypes
import NIOCore
import NIOHTTPTypes
import Synchronization

/// Caps the admin API's open connections: a connection beyond `limit` is closed as soon as it
/// is accepted (the client sees the connection reset and may retry), so a flood of idle or
/// slow connections (slowloris) cannot exhaust the node's file descriptors or memory. With
/// the server's idle timeout, a silent or trickling connection is closed after that timeout.
final class ConnectionCounter: Sendable {
    let limit: Int
    private let open = Atomic<Int>(0)
    private let refused = Atomic<Int>(0)

    init(limit: Int) { self.limit = limit }

    /// Open connections now (for tests and metrics).
    var current: Int { open.load(ordering: .relaxed) }
    /// Connections refused over the cap since start.
    var refusedCount: Int { refused.load(ordering: .relaxed) }

    func handler() -> ConnectionGuard { ConnectionGuard(counter: self) }

    func enter() -> Bool {
        let now = open.add(1, ordering: .relaxed).newValue
        if now > limit {
            open.subtract(1, ordering: .relaxed)
            refused.add(1, ordering: .relaxed)
            return false
        }
        return true
    }

    func leave() { open.subtract(1, ordering: .relaxed) }
}

/// One per connection (see ``ConnectionCounter``).
final class ConnectionGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    let counter: ConnectionCounter
    private var counted = false
    private var refused = false

    init(counter: ConnectionCounter) { self.counter = counter }

    func handlerAdded(context: ChannelHandlerContext) {
        // The pipeline is set up before the accepted socket is registered: count it then.
        if context.channel.isActive { admit(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        admit(context)
        context.fireChannelActive()
    }

    private func admit(_ context: ChannelHandlerContext) {
        guard !counted, !refused else { return }
        if counter.enter() {
            counted = true
        } else {
            refused = true
            // Closed once the server finished setting the connection up (a close during the
            // set-up is lost).
            let channel = context.channel
            context.eventLoop.scheduleTask(in: .milliseconds(1)) { channel.close(mode: .all, promise: nil) }
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if counted {
            counted = false
            counter.leave()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if counted {
            counted = false
            counter.leave()
        }
        context.fireChannelInactive()
    }
}

/// Closes the connection fully once an answer was written before its request's body was read
/// to the end (a refusal: 413, 401, 400 …), or one that says `Connection: close`: otherwise
/// the server half-closes, or keeps reading whatever the client goes on sending (up to a
/// declared 50 MB), holding the socket.
final class CloseAfterRefusal: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart
    private var requestComplete = true
    private var closeAfterEnd = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head: requestComplete = false
        case .body: break
        case .end: requestComplete = true
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let response):
            closeAfterEnd = !requestComplete || response.status == .contentTooLarge
                || response.headerFields[.connection]?.lowercased() == "close"
            context.write(data, promise: promise)
        case .body:
            context.write(data, promise: promise)
        case .end:
            guard closeAfterEnd else { return context.write(data, promise: promise) }
            closeAfterEnd = false
            let written = context.eventLoop.makePromise(of: Void.self)
            context.writeAndFlush(data, promise: written)
            let channel = context.channel
            written.futureResult.whenComplete { result in
                promise?.completeWith(result)
                channel.close(mode: .all, promise: nil)
            }
        }
    }
}
