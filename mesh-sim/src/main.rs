fn main() {
    println!("mesh-sim");
}
