import ArgumentParser
import FerryClient
import FerryProtocol
import Logging

struct LsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List a directory on a server.",
        discussion: """
        SERVER is HOST[:PORT], [IPv6]:PORT, ferry://HOST[:PORT]/PATH, or the name a server \
        announces (found by discovery). The default port is 7446.

        Examples:
          ferry ls 192.168.1.20
          ferry ls studio/photos/2024
          ferry ls '[::1]:7446/docs' --json
        """
    )

    @Argument(help: ArgumentHelp("The server and directory.", valueName: "SERVER[/PATH]"))
    var target: String

    @Flag(help: "Print one JSON object per entry.")
    var json = false

    @OptionGroup var client: ClientOptions

    func run() async throws {
        Output.bootstrapLogging(verbose: client.verbose)
        Output.jsonMode = json
        await Interrupt.install(progress: nil, resumable: false)
        let logger = Logger(label: "ferry.ls")
        do {
            let address = try ServerAddress.parse(target)
            let endpoint = try await ServerResolution.resolve(address, options: client, logger: logger)
            let options = try await client.connectionOptions(for: endpoint, name: address.serverName, logger: logger)
            let entries = try await FerryConnection.with(endpoint, options: options) { c in
                let list = try await c.list(address.path, kinds: true)
                await c.quit()
                return list
            }
            render(entries)
        } catch {
            throw Output.fail(error)
        }
    }

    private func render(_ entries: [Entry]) {
        if json {
            for e in entries {
                var o: [String: Any] = [
                    "type": Self.typeName(e.type), "name": e.path.description, "size": e.size,
                    "mtime": e.mtime.timeInterval, "mode": String(e.mode, radix: 8).leftPadded(to: 4),
                ]
                if let t = e.target { o["target"] = String(decoding: t, as: UTF8.self) }
                if let k = e.special { o["kind"] = k.noun }
                Output.json(o)
            }
            return
        }
        let sizeWidth = entries.map { String($0.size).count }.max() ?? 1
        for e in entries {
            let size = String(e.size)
            var line = Output.modeString(e.type, e.mode, kind: e.special) + "  "
                + String(repeating: " ", count: sizeWidth - size.count) + size + "  "
                + Output.date(e.mtime) + "  " + Output.printable(bytes: e.path.bytes)
            if e.type == .directory { line += "/" }
            if let t = e.target { line += " -> " + Output.printable(bytes: t) }
            Output.out(line)
        }
    }

    static func typeName(_ t: EntryType) -> String {
        switch t {
        case .file: return "file"
        case .directory: return "directory"
        case .symlink: return "symlink"
        case .other: return "other"
        }
    }
}
