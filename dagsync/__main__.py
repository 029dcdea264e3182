from dagsync.launch import main

main()
