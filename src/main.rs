fn main() {
    println!("hmdn-cpu: under construction");
}
