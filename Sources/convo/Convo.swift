@main
struct Convo { static func main() {} }
