extension UInt8 {
    /// `0`–`9`, `a`–`f` or `A`–`F`: a hexadecimal digit, for formats read byte by byte (API keys,
    /// percent-escapes in URLs).
    public var isASCIIHexDigit: Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(self) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(self)
            || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(self)
    }
}
