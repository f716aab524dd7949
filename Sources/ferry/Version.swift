import FerryProtocol

/// What `ferry --version` prints: this build's version and the protocol version it speaks
/// (README, "Versions"). The numbers themselves live in `FerryDefaults`.
enum VersionText {
    static let line = "ferry \(FerryDefaults.softwareVersion) (protocol \(FerryDefaults.protocolRevision), works with 1.0)"
}
