// Handlers take and return JSONValue: programs that import RegentWorker get it too.
@_exported import RegentJSON
