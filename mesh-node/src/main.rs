fn main() {
    println!("mesh-node");
}
