import PostgresClient

/// Quotes user input for an error message, escaping control characters and truncating it.
func quoted(_ text: String) -> String { SQLIdentifier.printable(text) }
