import CLibPQ
import EmbeddedPostgres
import Foundation
import PostgresClient
import RegentCore
import RegentDrill
import Synchronization

/// The database a benchmark runs on: `databaseURL`, or a private PostgreSQL started here
/// (returned so the caller destroys it when done).
package func benchDatabase(_ databaseURL: String?, say: (String) -> Void) throws -> (url: String, embedded: EmbeddedPostgres?) {
    if let databaseURL { return (databaseURL, nil) }
    say("▶ starting a private PostgreSQL …")
    let pg = try EmbeddedPostgres.start()
    return (pg.url(), pg)
}
