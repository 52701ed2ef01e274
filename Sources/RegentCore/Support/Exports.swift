// JSONValue and StrictJSON live in RegentJSON (shared with the RegentWorker SDK, which must
// not link libpq); RegentCore's users see them as before.
@_exported import RegentJSON
