/// This build's release name and the schema versions it knows (`regent --version`).
public enum Release {
    /// The release this source tree is, or leads to (`-dev` between tags).
    public static let name = "0.3.0-dev"

    /// e.g. `0.3.0-dev (schemas: auth 3, engine 7, workflow 16)`.
    public static var description: String {
        let catalog = MigrationCatalog.builtIn
        return "\(name) (schemas: " + catalog.schemas.map { "\($0) \(catalog.latestVersion(of: $0))" }.joined(separator: ", ") + ")"
    }
}
