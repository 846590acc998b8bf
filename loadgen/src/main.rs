fn main() {
    println!("loadgen: not yet implemented");
}
